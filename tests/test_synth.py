"""The synthetic Camelyon generator, checked on what it writes: slide pyramids and resolutions,
exact masks against the manifest, raters, colour per centre, determinism and resuming.

Slides are expensive (about 3 s for a negative/itc/micro slide, about 10 s for a macro one on one
core), so the module makes a few once and every test reads them:

* `dataset`: `generate_dataset` by centre, one slide for RUMC (SVS) and one for UMCU (TIFF), seed 7,
  two worker processes: two macro-metastases and a real manifest;
* `cli_run`: `ugafl synth` in a subprocess, RUMC only, seed 7, one worker, forced to TIFF: the same
  (seed, centre, index) as the dataset's RUMC slide, in another folder with another worker count;
* `extra`: single slides through `generate_slide`, two at a time: the negative slide (index 2) of
  every centre (colour statistics), RUMC's micro slide (index 1), an itc slide, and RST's negative
  slide again with seed 8 forced to SVS. The specs are those `plan_slides` makes for
  slides_per_centre=6, so each is what a full run would write.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ugafl.common.errors import ConfigError
from ugafl.common.manifest import Manifest, SlideRecord, load_manifest
from ugafl.common.slide import open_slide
from ugafl.common.tissue import detect_tissue
from ugafl.simulations.centres import CENTRES
from ugafl.simulations.raters import signed_distance_um
from ugafl.common.masks import read_mask
from ugafl.simulations.synth import SlideSpec, SynthConfig, generate_dataset, generate_slide, plan_slides
from ugafl.simulations.tumour import ITC_MAX_UM, MICRO_MAX_UM, greatest_dimension_px

UGAFL = Path(sys.executable).parent / "ugafl"
SEED = 7
VENDOR = {"svs": "aperio", "tiff": "generic-tiff"}
COLOUR_MPP = 4.0  # µm/px at which colour statistics and tissue are measured

# Mean optical density (natural log, per RGB channel, of tissue pixels against 255) measured on
# negative slides: between slides of one centre (RUMC, LabPON, CWZ; 4 slides each, seed 7, indices
# 2/6/10/14) the vectors lie at most 0.049 apart; between centres at least 0.10 (RUMC-LabPON, the
# closest pair; 0.143 for the index-2 slides used here). 0.08 is well clear of the former.
MIN_CENTRE_OD_DISTANCE = 0.08


@dataclass(frozen=True)
class Made:
    """A generated slide: its record and the folder its paths are relative to."""

    root: Path
    record: SlideRecord

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def slide_path(self) -> Path:
        return self.root / self.record.path


# --- fixtures: generate once per module ---------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, SynthConfig]:
    """(manifest, config) of a by-centre RUMC + UMCU run, 2 workers."""
    cfg = SynthConfig(slides_per_centre=1, seed=SEED, centres=("RUMC", "UMCU"))
    manifest = generate_dataset(tmp_path_factory.mktemp("dataset"), cfg, workers=2, progress=False)
    return manifest, cfg


@pytest.fixture(scope="module")
def cli_started(tmp_path_factory: pytest.TempPathFactory):
    """(process, dataset folder) of `ugafl synth` started in the background."""
    if not UGAFL.exists():
        pytest.fail(f"{UGAFL} missing: install the package with `pip install -e .[dev]`")
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "data"
    args = [str(UGAFL), "synth", "--out", str(out), "--centres", "RUMC", "--slides-per-centre", "1",
            "--seed", str(SEED), "--format", "tiff", "--workers", "1"]
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        process = subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True)
    yield process, out
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def cli_run(cli_started, dataset, extra) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The finished CLI run. It works on one core while `dataset` and `extra` are generated, which
    saves the time it would take alone."""
    process, out = cli_started
    process.wait(timeout=300)
    stdout, stderr = ((out.parent / name).read_text() for name in ("stdout", "stderr"))
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), out


def _spec(cfg: SynthConfig, centre: str, index: int) -> SlideSpec:
    (spec,) = [s for s in plan_slides(cfg) if s.centre == centre and s.index == index]
    return spec


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Made]:
    """Single slides by name: "<centre>_negative" for every centre, "micro", "itc", "seed8_svs"."""
    root = tmp_path_factory.mktemp("extra")
    six = SynthConfig(slides_per_centre=6, seed=SEED)
    forced_svs = replace(six, seed=8, file_format="svs")
    jobs = {f"{c}_negative": (root / "seed7", six, _spec(six, c, 2)) for c in CENTRES}
    jobs["micro"] = (root / "seed7", six, _spec(six, "RUMC", 1))
    jobs["itc"] = (root / "seed7", six, _spec(six, "RUMC", 3))  # several regions, all ITC-sized
    jobs["seed8_svs"] = (root / "seed8", forced_svs, _spec(forced_svs, "RST", 2))
    with ProcessPoolExecutor(max_workers=2) as pool:
        records = pool.map(generate_slide, *zip(*jobs.values()))
        return {name: Made(job[0], rec) for (name, job), rec in zip(jobs.items(), records)}


@pytest.fixture(scope="module")
def all_made(dataset, cli_run, extra) -> list[Made]:
    manifest = dataset[0]
    made = [Made(manifest.root, rec) for rec in manifest.slides]
    result, out = cli_run
    assert result.returncode == 0, result.stderr
    made += [Made(out, rec) for rec in load_manifest(out).slides]
    return made + list(extra.values())


# --- helpers ------------------------------------------------------------------------------------


def _largest_region_um(mask: np.ndarray, mpp: float) -> tuple[float, int]:
    """(greatest dimension in µm of the connected region with the largest one, number of regions),
    connectivity as the generator measures it (ndimage.label's default)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return 0.0, 0
    dims = [greatest_dimension_px(labels[sl] == i) for i, sl in enumerate(ndimage.find_objects(labels), start=1)]
    return max(dims) * mpp, n


def _tissue_colour(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean RGB, mean optical density per channel) over the tissue pixels at COLOUR_MPP."""
    with open_slide(path) as slide:
        rgb, _ = slide.thumbnail(COLOUR_MPP)
        tissue = detect_tissue(slide, COLOUR_MPP)
    assert tissue.mask.shape == rgb.shape[:2]
    assert 0.2 < tissue.fraction < 0.8, f"{path}: implausible tissue fraction {tissue.fraction:.2f}"
    pixels = rgb[tissue.mask].astype(np.float64)
    return pixels.mean(axis=0), (-np.log((pixels + 1) / 256)).mean(axis=0)


@pytest.fixture(scope="module")
def centre_colours(extra) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    colours = {c: _tissue_colour(extra[f"{c}_negative"].slide_path) for c in CENTRES}
    for centre, (rgb, od) in colours.items():
        blue = rgb[2] / rgb.sum()
        print(f"{centre:7s} mean RGB {np.round(rgb, 1)}  mean OD {np.round(od, 3)}  OD sum {od.sum():.3f}  "
              f"blue share {blue:.3f}")
    return colours


# --- 1. the CLI ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_synth_writes_a_loadable_dataset(cli_run):
    result, out = cli_run
    assert result.returncode == 0, result.stderr
    assert "1 slides in" in result.stdout and "RUMC 1" in result.stdout
    assert (out / "manifest.json").is_file()
    manifest = load_manifest(out)
    listed = [(s.slide_id, s.centre, s.split, s.label_type) for s in manifest.slides]
    assert listed == [("RUMC_000", "RUMC", "train", "macro")]
    assert manifest.info["config"]["seed"] == SEED and manifest.info["config"]["file_format"] == "tiff"
    for rec in manifest.slides:
        paths = [rec.path, rec.mask, *rec.rater_masks]
        assert len(rec.rater_masks) == 3
        for relative in paths:
            assert manifest.path_of(relative).is_file(), relative


# --- 2. levels, resolution, formats, masks ------------------------------------------------------


@pytest.mark.slow
def test_slides_open_with_levels_and_resolution(all_made):
    for made in all_made:
        rec = made.record
        with open_slide(made.slide_path) as slide:
            assert slide.vendor == VENDOR[rec.format], rec.slide_id
            assert made.slide_path.suffix == f".{rec.format}"
            assert len(slide.levels) >= 3 and len(slide.levels) == rec.levels, rec.slide_id
            assert slide.mpp == pytest.approx(0.5, abs=1e-3)
            assert slide.levels[0].mpp == pytest.approx(0.5, abs=1e-3)
            for finer, coarser in itertools.pairwise(slide.levels):
                assert coarser.mpp / finer.mpp == pytest.approx(2.0, rel=1e-2), (rec.slide_id, coarser)
            assert slide.dimensions == (rec.width, rec.height)
        assert rec.mpp == 0.5 and rec.mask_mpp == 1.0


@pytest.mark.slow
def test_by_centre_format_follows_the_centre_and_writes_both(dataset, extra):
    manifest = dataset[0]
    formats = {rec.centre: rec.format for rec in manifest.slides}
    assert formats == {"RUMC": "svs", "UMCU": "tiff"}
    for centre, profile in CENTRES.items():
        assert extra[f"{centre}_negative"].record.format == profile.file_format
    assert {CENTRES[c].file_format for c in CENTRES} == {"svs", "tiff"}


@pytest.mark.slow
def test_format_option_forces_one_format(cli_run, extra):
    # RUMC scans SVS but the CLI asked for TIFF; RST scans TIFF but the config asked for SVS.
    _, out = cli_run
    (rec,) = load_manifest(out).slides
    assert CENTRES["RUMC"].file_format == "svs" and rec.format == "tiff" and rec.path.endswith(".tiff")
    with open_slide(out / rec.path) as slide:
        assert slide.vendor == "generic-tiff"
    forced = extra["seed8_svs"]
    assert CENTRES["RST"].file_format == "tiff" and forced.record.format == "svs"
    with open_slide(forced.slide_path) as slide:
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_masks_match_the_slide_at_their_resolution(all_made):
    for made in all_made:
        rec = made.record
        truth, mpp = read_mask(made.path(rec.mask))
        assert mpp == pytest.approx(1.0, abs=1e-6)
        assert abs(truth.shape[0] - rec.height * 0.5) <= 2 and abs(truth.shape[1] - rec.width * 0.5) <= 2, rec.slide_id
        for rater in rec.rater_masks:
            mask, rater_mpp = read_mask(made.path(rater))
            assert mask.shape == truth.shape and rater_mpp == mpp


# --- 3. determinism -----------------------------------------------------------------------------


def _pixels(path: Path) -> list[np.ndarray]:
    """Level 2 whole, and three level-0 boxes (centre, a corner, an odd offset)."""
    with open_slide(path) as slide:
        level2 = slide.levels[2]
        out = [slide.read_level(2, (0, 0), (level2.width, level2.height))]
        w, h = slide.dimensions
        for x, y in ((w // 2, h // 2), (0, 0), (w // 3 + 17, h // 5 + 3)):
            out.append(slide.read_region((x, y), (512, 512), 0.5))
    return out


@pytest.mark.slow
def test_same_seed_centre_index_gives_identical_slides(dataset, cli_run):
    # Dataset: two worker processes, SVS. CLI: another folder, one worker, TIFF (same JPEG tiles).
    manifest = dataset[0]
    (a,) = manifest.select(centre="RUMC")
    _, out = cli_run
    (b,) = load_manifest(out).slides
    assert a.path != b.path
    for pa, pb in zip(_pixels(manifest.path_of(a.path)), _pixels(out / b.path)):
        np.testing.assert_array_equal(pa, pb)
    for ma, mb in zip([a.mask, *a.rater_masks], [b.mask, *b.rater_masks]):
        np.testing.assert_array_equal(read_mask(manifest.path_of(ma))[0], read_mask(out / mb)[0])
    assert replace(a, path="", format="") == replace(b, path="", format="")


@pytest.mark.slow
def test_different_seed_gives_different_slide(extra):
    a, b = extra["RST_negative"], extra["seed8_svs"]
    assert (a.record.centre, a.record.slide_id) == (b.record.centre, b.record.slide_id)
    assert a.record.seed != b.record.seed
    pa, pb = _pixels(a.slide_path)[0], _pixels(b.slide_path)[0]
    h, w = min(pa.shape[0], pb.shape[0]), min(pa.shape[1], pb.shape[1])
    diff = np.abs(pa[:h, :w, :3].astype(int) - pb[:h, :w, :3].astype(int)).mean()
    assert pa.shape != pb.shape or diff > 5, diff


# --- 4. colour per centre -----------------------------------------------------------------------


@pytest.mark.slow
def test_centres_differ_in_tissue_colour(centre_colours):
    for (ca, (_, oda)), (cb, (_, odb)) in itertools.combinations(centre_colours.items(), 2):
        distance = float(np.linalg.norm(oda - odb))
        assert distance > MIN_CENTRE_OD_DISTANCE, f"{ca} vs {cb}: mean OD only {distance:.3f} apart"


@pytest.mark.slow
def test_rst_is_the_darkest_centre(centre_colours):
    density = {c: float(od.sum()) for c, (_, od) in centre_colours.items()}
    darkest, runner_up = sorted(density, key=density.get, reverse=True)[:2]
    assert darkest == "RST", density
    assert density["RST"] > density[runner_up] + 0.2, density  # observed 2.28 vs UMCU 1.82
    brightness = {c: float(rgb.mean()) for c, (rgb, _) in centre_colours.items()}
    assert min(brightness, key=brightness.get) == "RST", brightness


@pytest.mark.slow
def test_rst_is_the_bluest_centre(centre_colours):
    blue_share = {c: float(rgb[2] / rgb.sum()) for c, (rgb, _) in centre_colours.items()}
    assert max(blue_share, key=blue_share.get) == "RST", blue_share


# --- 5. tumour size against the label type and the manifest ----------------------------------


@pytest.mark.slow
def test_tumour_size_matches_label_type_and_manifest(all_made):
    assert {m.record.label_type for m in all_made} == {"negative", "itc", "micro", "macro"}
    for made in all_made:
        rec = made.record
        truth, mpp = read_mask(made.path(rec.mask))
        largest, n_regions = _largest_region_um(truth, mpp)
        if rec.label_type == "negative":
            assert not truth.any() and rec.tumour_regions == (), rec.slide_id
            continue
        assert n_regions == len(rec.tumour_regions), rec.slide_id
        assert largest == pytest.approx(rec.tumour_regions[0].greatest_dimension_um, abs=0.051), rec.slide_id
        assert sum(r.area_um2 for r in rec.tumour_regions) == pytest.approx(truth.sum() * mpp**2, abs=1.0)
        if rec.label_type == "itc":
            assert 0 < largest <= ITC_MAX_UM, (rec.slide_id, largest)
        elif rec.label_type == "micro":
            assert ITC_MAX_UM < largest <= MICRO_MAX_UM, (rec.slide_id, largest)
        else:
            assert largest > MICRO_MAX_UM, (rec.slide_id, largest)


# --- 6. tumour lies in tissue -------------------------------------------------------------------


@pytest.mark.slow
def test_tumour_lies_inside_tissue(all_made):
    for made in all_made:
        rec = made.record
        truth, mpp = read_mask(made.path(rec.mask))
        if not truth.any():
            continue
        with open_slide(made.slide_path) as slide:
            tissue = detect_tissue(slide, COLOUR_MPP)
        ys, xs = np.nonzero(truth)
        scale = mpp / tissue.mpp
        ty = np.minimum((ys * scale).astype(int), tissue.mask.shape[0] - 1)
        tx = np.minimum((xs * scale).astype(int), tissue.mask.shape[1] - 1)
        on_tissue = tissue.mask[ty, tx].mean()
        # The outline spans gland lumens and tears inside the node, as a pathologist's does: those
        # are glass, but enclosed by tissue.
        in_section = ndimage.binary_fill_holes(tissue.mask)[ty, tx].mean()
        assert in_section >= 0.99, (rec.slide_id, in_section)
        assert on_tissue >= 0.9, (rec.slide_id, on_tissue)


# --- 7. raters ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_raters_agree_in_the_bulk_and_differ_at_the_boundary(all_made):
    for made in all_made:
        rec = made.record
        truth, mpp = read_mask(made.path(rec.mask))
        raters = [read_mask(made.path(p))[0] for p in rec.rater_masks]
        assert len(raters) == 3
        if rec.label_type == "negative":
            assert not any(r.any() for r in raters), rec.slide_id
            continue
        pairs_differ = [bool((a ^ b).any()) for a, b in itertools.combinations(raters, 2)]
        # Two raters who both miss every region of an ITC slide would agree (on nothing).
        assert all(pairs_differ) if rec.label_type in ("micro", "macro") else any(pairs_differ), rec.slide_id
        # Everything happens near the tumour: crop to it (raters stay within 80 µm of the truth).
        ys, xs = np.nonzero(truth | np.logical_or.reduce(raters))
        pad = int(100 / mpp)
        box = (slice(max(ys.min() - pad, 0), ys.max() + pad + 1), slice(max(xs.min() - pad, 0), xs.max() + pad + 1))
        assert truth[box].sum() == truth.sum()
        truth, raters = truth[box], [r[box] for r in raters]
        labels, n_regions = ndimage.label(truth)
        region_area_um2 = ndimage.sum(truth, labels, np.arange(1, n_regions + 1)) * mpp**2
        distance = np.abs(signed_distance_um(truth, mpp))
        for rater in raters:
            dice = 2 * (rater & truth).sum() / (rater.sum() + truth.sum())
            if rec.label_type in ("micro", "macro"):
                assert dice > 0.8, (rec.slide_id, dice)
            # A rater may leave out a whole small region (area under a 0.2 mm disk's); that aside,
            # raters differ from the truth only near its boundary: by their bias (-8..12 µm) plus
            # a wander of sd 15 µm. Observed at most 57.5 µm; 99% of it within 40 µm.
            hit = np.unique(labels[rater & truth])
            missed = np.setdiff1d(np.arange(1, n_regions + 1), hit)
            assert all(region_area_um2[missed - 1] < np.pi * 100.0**2), (rec.slide_id, region_area_um2[missed - 1])
            disagree = distance[(rater ^ truth) & ~np.isin(labels, missed)]
            assert (rater ^ truth).any(), rec.slide_id
            if disagree.size:
                assert disagree.max() <= 70.0, (rec.slide_id, disagree.max())
                assert np.quantile(disagree, 0.99) <= 50.0, (rec.slide_id, np.quantile(disagree, 0.99))


# --- 8. resume ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_rerun_reuses_the_slides(dataset):
    manifest, cfg = dataset
    root = manifest.root
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")

    def identity(p: Path) -> tuple[int, int]:  # a file written again (in place or replaced) changes
        st = p.stat()
        return st.st_ino, st.st_mtime_ns

    before = {p: identity(p) for p in files}
    text = (root / "manifest.json").read_text()
    again = generate_dataset(root, cfg, workers=2, progress=False)
    # Reused, not made again: no slide, mask or rater file was written (no timing needed to tell).
    assert sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json") == files
    assert {p: identity(p) for p in files} == before
    assert (root / "manifest.json").read_text() == text
    assert again.slides == manifest.slides == load_manifest(root).slides
    assert json.loads(text)["info"]["digest"] == cfg.digest()


# --- 9. the plan ---------------------------------------------------------------------------------


def test_plan_six_per_centre_has_four_train_and_two_test():
    cfg = SynthConfig(slides_per_centre=6)
    specs = plan_slides(cfg)
    assert len(specs) == 6 * len(CENTRES)
    for centre in CENTRES:
        mine = [s for s in specs if s.centre == centre]
        assert [s.index for s in mine] == list(range(6))
        train = [s.label_type for s in mine if s.split == "train"]
        test = [s.label_type for s in mine if s.split == "test"]
        assert train == ["macro", "micro", "negative", "itc"]
        assert test == ["macro", "micro"]
        assert [s.split for s in mine] == ["train"] * 4 + ["test"] * 2  # test slides come last


def test_plan_small_and_custom_configs():
    assert [(s.split, s.label_type) for s in plan_slides(SynthConfig(slides_per_centre=1, centres=("CWZ",)))] == [
        ("train", "macro")]
    assert [(s.split, s.label_type) for s in plan_slides(SynthConfig(slides_per_centre=2, centres=("CWZ",)))] == [
        ("train", "macro"), ("test", "macro")]
    specs = plan_slides(SynthConfig(slides_per_centre=9, centres=("RST", "RUMC")))
    assert [s.centre for s in specs] == ["RST"] * 9 + ["RUMC"] * 9
    for centre in ("RST", "RUMC"):
        test = [s.label_type for s in specs if s.centre == centre and s.split == "test"]
        assert test == ["macro", "micro", "negative"]
    with pytest.raises(ConfigError, match="unknown centre 'XYZ'"):
        plan_slides(SynthConfig(slides_per_centre=2, centres=("RUMC", "XYZ")))


def test_the_benchmark_plan_has_four_candidate_and_eight_test_slides_with_every_size_class():
    specs = plan_slides(SynthConfig(slides_per_centre=12, test_fraction=0.6667, world="benchmark-2"))
    for centre in CENTRES:
        test = [s.label_type for s in specs if s.centre == centre and s.split == "test"]
        assert sorted(test) == sorted(["negative", "itc", "micro", "macro"] * 2)
        assert [s.label_type for s in specs if s.centre == centre and s.split == "train"] == ["macro", "micro", "negative", "itc"]


def test_worlds_share_the_central_centre_and_shift_the_others_in_more_than_colour():
    from dataclasses import asdict

    from ugafl.simulations.centres import WORLDS, get_centre

    colour = {"hematoxylin", "eosin", "hematoxylin_strength", "eosin_strength", "background"}
    for world in ("benchmark-1", "benchmark-2"):
        assert get_centre("RUMC", world) == get_centre("RUMC")  # the same central model trains on every world
        for name in CENTRES:
            if name == "RUMC":
                continue
            mine, central = asdict(get_centre(name, world)), asdict(get_centre("RUMC", world))
            assert {k for k in mine if mine[k] != central[k] and k not in colour | {"name", "file_format"}}, name
    assert set(WORLDS) == {"demo", "benchmark-1", "benchmark-2"}
    assert [c for c in CENTRES if get_centre(c, "benchmark-1") != get_centre(c, "benchmark-2")] == ["LabPON"]
    with pytest.raises(ConfigError, match="unknown world 'moon'; known: demo, benchmark-1, benchmark-2"):
        get_centre("RUMC", "moon")
    # The demo's slides keep their digest: the key is left out for the demo world.
    assert SynthConfig().digest() == SynthConfig(world="demo").digest() != SynthConfig(world="benchmark-1").digest()
