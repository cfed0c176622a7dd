"""Slides as hospitals store them: a DICOM WSI series (one file per pyramid level, one
SeriesInstanceUID) written by wsidicom from a synthetic slide, and the real vendor files in
../shared/fixtures/openslide/. A slide stored as several files is one slide everywhere: in the
folder scan, `ugafl uncertainty` (given one of its files or its folder) and the inbox watcher."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from conftest import write_synthetic_tiff
from dicom_helpers import tiff_levels, write_dicom_series
from ugafl.client.daemon.inbox_watcher import _run_one, scan_inbox
from ugafl.client.round.slide_uncertainty import run_uncertainty
from ugafl.client.site_config import SiteConfig
from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.errors import SlideError
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.slide import open_slide
from ugafl.common.slide_files import resolve, slides_in
from ugafl.common.slide_scan import candidate_files, scan_folder
from ugafl.common.uncertainty_methods import method_from_models

UGAFL = Path(sys.executable).with_name("ugafl")
TINY = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0)
CT_FILE = Path(get_testdata_file("CT_small.dcm"))  # a real DICOM file that is no slide (pydicom's)


def ugafl(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), *map(str, args)], capture_output=True, text=True, timeout=300)


def copy_series(src: Path, dst: Path, only: list[str] | None = None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and (only is None or path.name in only):
            shutil.copy2(path, dst / path.name)


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    """A synthetic slide as a pyramidal TIFF and as a 4-file DICOM series (folder `series/`), a
    second, smaller series without file suffixes, and a tiny model checkpoint."""
    root = tmp_path_factory.mktemp("dicom")
    tiff = write_synthetic_tiff(root / "slide.tiff")  # 2048 x 1536 at 0.5 µm/px, 4 levels
    series = write_dicom_series(tiff_levels(tiff.path), 0.5, root / "series")
    other = write_synthetic_tiff(root / "other.tiff", size=(512, 384), levels=2, mpp=0.25)
    bare = write_dicom_series(tiff_levels(other.path), 0.25, root / "bare", suffix="", prefix="IM")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.pt", build_model(TINY), TINY)
    return {"root": root, "tiff": tiff, "series": series, "bare": bare, "model": root / "tiny.pt"}


def test_a_series_is_one_slide_with_its_size_levels_and_resolution(dicom):
    series, tiff = dicom["series"], dicom["tiff"]
    assert [p.name for p in series.files] == ["level0.dcm", "level1.dcm", "level2.dcm", "level3.dcm"]
    assert candidate_files(series.folder) == [series.folder / "level0.dcm"]
    # any file of the series, or its folder, opens the whole slide: OpenSlide finds the other levels
    for path in [*series.files, series.folder]:
        with open_slide(path) as slide:
            assert slide.vendor == "dicom" and slide.path == path
            assert slide.dimensions == (2048, 1536)
            assert slide.mpp == pytest.approx(0.5)  # openslide.mpp-x/y from the DICOM PixelSpacing
            assert [(lv.downsample, lv.mpp) for lv in slide.levels] == [(1.0, 0.5), (2.0, 1.0), (4.0, 2.0), (8.0, 4.0)]
    # the same pixels as the slide it was made from (JPEG tiles: close, not equal)
    with open_slide(series.folder) as dcm, open_slide(tiff.path) as tif:
        for mpp in (0.5, 2.0, 4.0):
            a, b = dcm.read_region((0, 0), (2048, 1536), mpp), tif.read_region((0, 0), (2048, 1536), mpp)
            assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 4
        x, y, w, h = tiff.marker_box
        marker = dcm.read_region((x + 8, y + 8), (w - 16, h - 16), 0.5).reshape(-1, 3).mean(axis=0)
        assert np.abs(marker - tiff.marker_colour).max() < 10
    (report,) = scan_folder(series.folder)
    assert report.error is None and report.info["level_count"] == 4
    assert report.info["tissue_fraction"] == pytest.approx(tiff.expected_fraction, abs=0.02)


def test_pixel_spacing_rows_and_columns_become_mpp_y_and_x(tmp_path, caplog):
    """DICOM's PixelSpacing is (row, column) spacing: OpenSlide's mpp-y and mpp-x, in that order."""
    import openslide

    levels = [np.full((256, 320, 3), 200, np.uint8)]
    series = write_dicom_series(levels, 0.5, tmp_path / "aniso", mpp_y=0.25)
    with openslide.OpenSlide(str(series.files[0])) as raw:
        assert (float(raw.properties["openslide.mpp-x"]), float(raw.properties["openslide.mpp-y"])) == (0.5, 0.25)
    with caplog.at_level(logging.WARNING, logger="ugafl"), open_slide(series.files[0]) as slide:
        assert slide.mpp == pytest.approx(0.375)
    assert "x and y resolution differ (0.5 vs 0.25" in caplog.text


def test_series_grouped_by_uid_beside_other_files(dicom, tmp_path, fixtures_dir):
    """Two series loose in one folder (one without file suffixes), with a DICOMDIR, a sidecar and
    a DICOM object that is no slide image: two slides, each with its own levels and resolution."""
    inbox = tmp_path / "inbox"
    copy_series(dicom["series"].folder, inbox)
    copy_series(dicom["bare"].folder, inbox)
    shutil.copy(CT_FILE, inbox / "ct.dcm")  # a CT image: DICOM, but no slide
    shutil.copy(get_testdata_file("DICOMDIR"), inbox / "DICOMDIR")  # a real media directory (pydicom's)
    (inbox / "series.json").write_text("{}")
    assert candidate_files(inbox) == [inbox / "IM0", inbox / "level0.dcm"]
    with open_slide(inbox / "IM1") as bare, open_slide(inbox / "level2.dcm") as big:
        assert (bare.dimensions, bare.mpp, len(bare.levels)) == ((512, 384), pytest.approx(0.25), 2)
        assert (big.dimensions, big.mpp, len(big.levels)) == ((2048, 1536), pytest.approx(0.5), 4)
    assert resolve(inbox / "level3.dcm").path == inbox / "level0.dcm"
    assert resolve(inbox / "IM1").files == (inbox / "IM0", inbox / "IM1")
    # the real DICOM fixtures: two files of one series (the same SeriesInstanceUID) are one slide
    (pair,) = [s for s in slides_in(fixtures_dir) if s.kind == "dicom"]
    assert (pair.path.name, [f.name for f in pair.files]) == ("boxes_0.dcm", ["boxes_0.dcm", "boxes_1.dcm"])


def test_vendor_fixture_folder_lists_each_slide_once(fixtures_dir):
    """What is in ../shared/fixtures/openslide/: Aperio SVS, generic TIFF, a DICOM pair, the broken
    files; README.md is no slide. Each good one opens with its vendor and resolution."""
    assert [p.name for p in candidate_files(fixtures_dir)] == [
        "boxes.png", "boxes.tiff", "boxes_0.dcm", "small.svs", "unopenable.tiff", "unreadable.svs"]
    for name, vendor, mpp in [("small.svs", "aperio", 0.499), ("boxes_0.dcm", "dicom", 0.499),
                              ("boxes_1.dcm", "dicom", 0.499)]:
        with open_slide(fixtures_dir / name) as slide:
            assert (slide.vendor, slide.dimensions, slide.mpp) == (vendor, (16, 16), pytest.approx(mpp))
    with open_slide(fixtures_dir / "boxes.tiff", mpp=0.5) as slide:
        assert (slide.vendor, len(slide.levels)) == ("generic-tiff", 4)


def test_inbox_layouts_count_each_slide_once(dicom, tmp_path, fixtures_dir):
    """A series loose in the inbox, a series in its own folder, MIRAX's .mrxs beside its data folder,
    a Hamamatsu .vms beside the files it names, a folder that holds two series: each one entry.
    Plain subfolders are not scanned, as before. (The MIRAX and VMS files here are stand-ins: only
    how they are grouped is checked; no real ones are in the fixtures.)"""
    inbox = tmp_path / "inbox"
    copy_series(dicom["series"].folder, inbox / "case7")
    copy_series(dicom["bare"].folder, inbox)
    shutil.copy(fixtures_dir / "small.svs", inbox / "small.svs")
    (inbox / "scan.mrxs").write_text("[GENERAL]\n")  # MIRAX: the index file and its data folder
    (inbox / "scan").mkdir()
    (inbox / "scan" / "Slidedat.ini").write_text("[GENERAL]\n")
    (inbox / "scan" / "Data0000.dat").write_bytes(b"\0" * 64)
    (inbox / "hama.vms").write_text("[Virtual Microscope Specimen]\nNoLayers=1\nImageFile=hama.jpg\n"
                                    "ImageFile(1,0)=hama_1.jpg\nMapFile=hama_map.jpg\nOptimisationFile=hama.opt\n")
    for name in ("hama.jpg", "hama_1.jpg", "hama_map.jpg", "hama.opt"):  # Hamamatsu VMS: the files it names
        (inbox / name).write_bytes(b"\xff\xd8" + b"\0" * 32)
    (inbox / "archive").mkdir()  # a plain subfolder: not scanned
    shutil.copy(fixtures_dir / "small.svs", inbox / "archive" / "old.svs")
    copy_series(dicom["series"].folder, inbox / "two")  # two series in one folder
    copy_series(dicom["bare"].folder, inbox / "two")
    slides = {s.path.name: s for s in slides_in(inbox)}
    assert sorted(slides) == ["IM0", "case7", "hama.vms", "scan.mrxs", "small.svs", "two"]
    assert (slides["case7"].kind, len(slides["case7"].files)) == ("folder", 4)
    assert (slides["scan.mrxs"].kind, len(slides["scan.mrxs"].files)) == ("mirax", 3)
    assert (slides["hama.vms"].kind, len(slides["hama.vms"].files)) == ("vms", 5)
    with open_slide(inbox / "case7") as slide:
        assert slide.dimensions == (2048, 1536) and slide.path == inbox / "case7"
    with pytest.raises(SlideError, match=r"two: a slide folder must hold one slide's files, this one holds 2 slides"):
        open_slide(inbox / "two")


def test_inbox_registers_a_series_once_and_only_when_all_its_files_are_there(dicom, tmp_path, fixtures_dir, caplog):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "site.toml").write_text('[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["c.pub"]\n')
    site = SiteConfig.load(tmp_path / "site.toml")
    series = dicom["series"]
    # a series being copied file by file (level 0 last): never registered half-way
    registry: dict[str, dict] = {}
    for name in ["level3.dcm", "level2.dcm", "level1.dcm", "level0.dcm"]:
        shutil.copy2(series.folder / name, inbox / name)
        assert scan_inbox(site, registry) == []
        assert all(e["state"] == "pending" for e in registry.values()) and len(registry) == 1
    assert list(registry) == ["level0.dcm"] and registry["level0.dcm"]["files"] == 4
    copy_series(dicom["bare"].folder, inbox / "case7")  # a series in its own folder
    shutil.copy(fixtures_dir / "small.svs", inbox / "small.svs")
    (inbox / "broken.dcm").write_bytes((series.folder / "level3.dcm").read_bytes()[:700])  # cut short
    (inbox / "notes.txt").write_text("not a slide")
    with caplog.at_level(logging.INFO, logger="ugafl"):
        assert [p.name for p in scan_inbox(site, registry)] == ["level0.dcm"]  # settled for one poll
        assert sorted(p.name for p in scan_inbox(site, registry)) == ["case7", "small.svs"]
        for _ in range(2):  # and then nothing: no slide is registered twice
            before = json.dumps(registry, sort_keys=True)
            assert scan_inbox(site, registry) == []
            assert json.dumps(registry, sort_keys=True) == before
    assert sorted(registry) == ["broken.dcm", "case7", "level0.dcm", "small.svs"]
    assert {n: e["state"] for n, e in registry.items()} == {
        "broken.dcm": "unreadable", "case7": "registered", "level0.dcm": "registered", "small.svs": "registered"}
    assert registry["level0.dcm"]["size_px"] == [2048, 1536] and registry["level0.dcm"]["mpp"] == pytest.approx(0.5)
    assert registry["case7"]["size_px"] == [512, 384] and registry["case7"]["mpp"] == pytest.approx(0.25)
    assert str(inbox / "broken.dcm") in registry["broken.dcm"]["reason"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "broken.dcm" in errors[0]  # logged once, and the watcher went on
    registered = [r.getMessage() for r in caplog.records if r.getMessage().startswith("registered ")]
    assert sorted(m.split()[1] for m in registered) == ["case7", "level0.dcm", "small.svs"]
    # a file of the series changes: the slide is looked at again, still as one
    (inbox / "level3.dcm").unlink()
    scan_inbox(site, registry)
    assert registry["level0.dcm"]["state"] == "pending" and registry["level0.dcm"]["files"] == 3


def test_folder_slide_precomputed_by_the_watcher_is_reused_by_the_round(dicom, tmp_path, caplog):
    """The watcher's outputs for a slide's folder land where the round's query looks (OUT/<folder>),
    and the query (run_uncertainty over the inbox) reuses them instead of scoring the slide again."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    copy_series(dicom["series"].folder, inbox / "case7")
    torch.manual_seed(0)
    method = method_from_models("mc_dropout", [build_model(TINY).eval()], TINY, "cpu", 2)
    result = _run_one(inbox / "case7", method, out, "cpu", 128.0)
    assert result.error is None and result.patches > 0 and result.out_dir == out / "case7"
    assert [p.name for p in out.iterdir()] == ["case7"]  # nothing else left behind
    assert json.loads((out / "case7" / "summary.json").read_text())["slide"] == "case7"
    with caplog.at_level(logging.INFO, logger="ugafl"):
        (again,) = run_uncertainty(inbox, method, out, progress=False, reuse=True, patch_um=128.0)
    assert again.path == inbox / "case7" and again.patches == result.patches
    assert "case7: uncertainty already computed" in caplog.text


def test_uncertainty_cli_scores_a_series_once_from_a_file_or_its_folder(dicom, tmp_path):
    series, model = dicom["series"], dicom["model"]
    common = ["--model", model, "--method", "mc_dropout", "--passes", "2", "--patch-um", "128"]
    runs = {}
    for label, target in [("file", series.folder / "level2.dcm"), ("folder", series.folder)]:
        out = tmp_path / label
        result = ugafl("uncertainty", target, *common, "--out", out)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if " patches" in line]
        # named by its folder, as when the folder above is scanned (two series folders never share a name)
        assert len(lines) == 1 and lines[0].startswith(f"{series.folder.name}: "), result.stdout
        assert [p.name for p in out.iterdir()] == [series.folder.name]
        runs[label] = json.loads((out / series.folder.name / "summary.json").read_text())
        with (out / series.folder.name / "patches.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        # 128 µm patches at the series' 0.5 µm/px: 256 level-0 px, inside the 2048 x 1536 slide
        assert len(rows) == runs[label]["patches"] > 0
        assert {(float(r["width"]), float(r["height"])) for r in rows} == {(256.0, 256.0)}
        assert all(float(r["x"]) + 256 <= 2048 and float(r["y"]) + 256 <= 1536 for r in rows)
    assert runs["file"]["patches"] == runs["folder"]["patches"]

    # two series exported with the same file names, scored one after the other into one folder: two slides
    copy_series(series.folder, tmp_path / "caseB")
    result = ugafl("uncertainty", tmp_path / "caseB", *common, "--out", tmp_path / "folder")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == sorted(["caseB", series.folder.name])


def test_a_broken_dicom_file_is_one_error_line_naming_it(dicom, tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes((dicom["series"].folder / "level3.dcm").read_bytes()[:700])
    out = tmp_path / "out"
    result = ugafl("uncertainty", broken, "--model", dicom["model"], "--method", "mc_dropout", "--out", out)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(broken) in errors[0] and "cannot be opened" in errors[0], result.stderr
    assert not out.exists()
    # a series whose level-2 file (the one read at the model's 2 µm/px) is cut short in its pixels:
    # it opens, then breaks while being read; still one line, exit 2, naming the slide (its folder)
    cut = tmp_path / "cut"
    copy_series(dicom["series"].folder, cut)
    data = (cut / "level2.dcm").read_bytes()
    (cut / "level2.dcm").write_bytes(data[: len(data) // 2])
    single = ugafl("uncertainty", cut / "level1.dcm", "--model", dicom["model"], "--method", "mc_dropout",
                   "--passes", "2", "--patch-um", "128", "--out", out)
    assert single.returncode == 2 and "Traceback" not in single.stderr, single.stderr
    errors = [line for line in single.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{cut}: cannot be read" in errors[0], single.stderr
    assert not (out / "cut").exists()


def test_the_viewer_finds_a_series_by_the_name_the_inbox_gives_it(dicom, tmp_path):
    import xml.etree.ElementTree as ET

    from ugafl.client.review.tiles import SlideTiles

    inbox = tmp_path / "inbox"
    copy_series(dicom["series"].folder, inbox / "case7")
    copy_series(dicom["bare"].folder, inbox)
    tiles = SlideTiles(inbox)
    try:
        for name, size in [("case7", ("2048", "1536")), ("IM0", ("512", "384"))]:
            found = ET.fromstring(tiles.dzi(name)).find("{http://schemas.microsoft.com/deepzoom/2008}Size").attrib
            assert (found["Width"], found["Height"]) == size
        assert tiles.dzi("IM1") is None  # a file of IM0's series, not a slide of its own
    finally:
        tiles.close()
