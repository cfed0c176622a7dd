"""`ugafl uncertainty` and `ugafl uncertainty-report` end to end, as a user runs them: the console
script in a subprocess, tiny untrained checkpoints, a tiny 2-centre synthetic dataset and the
real slide fixtures (good, tiny and broken files)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.manifest import load_manifest
from ugafl.common.masks import read_mask
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.slide import open_slide
from ugafl.common.tiling import patch_grid
from ugafl.common.tissue import detect_tissue
from ugafl.simulations.synth import SynthConfig, generate_dataset

UGAFL = Path(sys.executable).with_name("ugafl")
TINY = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0)
TINY_EDUE = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0, disagreement_head=True)
BROKEN = ("boxes.png", "unopenable.tiff", "unreadable.svs", "boxes.tiff")  # the last: mpp 352.8
TINY_SLIDES = ("small.svs", "boxes_0.dcm")  # 16x16 px at 0.499 µm/px (boxes_1.dcm: boxes_0's series)
BOX_COLUMNS = ["x", "y", "width", "height", "mpp", "tissue_fraction", "tumour_fraction"]


def score_columns(measures: list[str]) -> list[str]:
    """Each measure's score under each patch scoring: the mean (the measure's name), the paper's."""
    return [column for m in measures for column in (m, f"{m}_paper")]


def ugafl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-centre dataset (2 slides per centre: one train, one test each) and tiny checkpoints:
    three ensemble members, one with the EDUE head."""
    root = tmp_path_factory.mktemp("uncertainty_cli")
    data = root / "data"
    generate_dataset(data, SynthConfig(slides_per_centre=2, seed=5, centres=("RUMC", "RST")), workers=2, progress=False)
    ckpts = {}
    for name, cfg, seed in [("m0", TINY, 0), ("m1", TINY, 1), ("m2", TINY, 2), ("edue", TINY_EDUE, 3)]:
        ckpts[name] = root / f"{name}.pt"
        torch.manual_seed(seed)
        save_checkpoint(ckpts[name], build_model(cfg), cfg)
    manifest = load_manifest(data)
    (slide_rec,) = manifest.select(centre="RUMC", split="test")
    return {"root": root, "data": data, "ckpts": ckpts, "slide": manifest.path_of(slide_rec.path), "record": slide_rec}


def model_args(method: str, ckpts: dict[str, Path]) -> list[str]:
    if method == "ensemble":
        return ["--model", ckpts["m0"], "--model", ckpts["m1"], "--model", ckpts["m2"]]
    return ["--model", ckpts["edue" if method == "edue" else "m0"]]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ensemble", "mc_dropout", "tta", "edue"])
def test_each_method_writes_heatmap_mask_table_and_summary(setup, method):
    slide, ckpts, root = setup["slide"], setup["ckpts"], setup["root"]
    out, ws = root / f"out_{method}", root / f"ws_{method}"
    result = ugafl("uncertainty", slide, *model_args(method, ckpts), "--method", method, "--out", out, "--workspace", ws,
                   "--patch-um", TINY.patch_size * TINY.mpp)  # the tiny model's own tiles, for many patches
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    folder = out / slide.stem
    assert sorted(p.name for p in folder.iterdir()) == ["heatmap.png", "patches.csv", "predicted_mask.tif", "summary.json",
                                                        "tumour_overlay.tif", "uncertainty_overlay.tif"]

    summary = json.loads((folder / "summary.json").read_text())
    measure = "variance" if method == "edue" else "uga"
    assert summary["method"] == method and summary["measure"] == measure and summary["slide"] == slide.name
    assert summary["mpp"] == TINY.mpp and summary["map_mpp"] == 8.0
    n = summary["patches"]
    # the slide's grid boxes with at least 10% tissue, as the library finds them, and only those
    with open_slide(slide) as opened:
        tissue = detect_tissue(opened)
        grid = patch_grid(opened, TINY.mpp, TINY.patch_size, tissue=tissue, min_tissue=0)
        kept = [(p.x, p.y, tissue.fraction_in((p.x, p.y), (p.width, p.height), opened.mpp)) for p in grid]
    kept = [k for k in kept if k[2] >= 0.1]
    assert n == len(kept) > 20
    assert f"{slide.name}: {n} patches, mean {measure} " in result.stdout

    with (folder / "patches.csv").open() as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = list(reader)
    expected = BOX_COLUMNS + score_columns(["entropy", "mutual_information", "uga"] +
                                           (["variance"] if method == "edue" else []))
    assert header == expected
    assert len(rows) == n
    level0 = round(TINY.patch_size * TINY.mpp / setup["record"].mpp)
    for row in rows:
        assert int(row["width"]) == int(row["height"]) == level0
        assert int(row["x"]) % level0 == 0 and int(row["y"]) % level0 == 0
        assert float(row["mpp"]) == TINY.mpp
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [(x, y) for x, y, _ in kept]
    assert [float(r["tissue_fraction"]) for r in rows] == pytest.approx([f for _, _, f in kept], abs=1e-4)
    scores = np.array([float(r[measure]) for r in rows])
    assert summary["mean_patch_score"] == pytest.approx(scores.mean(), abs=1e-5)
    assert summary["max_patch_score"] == pytest.approx(scores.max(), abs=1e-5)
    if method == "edue":
        assert all(float(r["mutual_information"]) == 0 for r in rows)  # one member: no disagreement
    else:
        mi = np.array([float(r["mutual_information"]) for r in rows])
        assert mi.max() > 0  # members disagree somewhere
        assert (np.array([float(r["uga"]) for r in rows]) >= np.array([float(r["entropy"]) for r in rows]) - 1e-5).all()

    heatmap = folder / "heatmap.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert heatmap.stat().st_size > 20_000
    with Image.open(heatmap) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 300
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas

    mask, mask_mpp = read_mask(folder / "predicted_mask.tif")
    assert mask.dtype == bool
    assert mask_mpp == pytest.approx(summary["map_mpp"], rel=1e-6)
    rec = setup["record"]
    assert mask.shape == (round(rec.height * rec.mpp / mask_mpp), round(rec.width * rec.mpp / mask_mpp))
    assert summary["tumour_mm2"] == pytest.approx(mask.sum() * (mask_mpp / 1000) ** 2, rel=1e-6)
    with open_slide(folder / "tumour_overlay.tif") as overlay:  # the slide's frame, at the model's mpp here
        assert overlay.mpp == pytest.approx(TINY.mpp)
        assert overlay.dimensions == (rec.width // 4, rec.height // 4)

    table = ws / "patch_scores" / f"{slide.stem}.{method}.csv"
    assert table.read_bytes() == (folder / "patches.csv").read_bytes()


@pytest.fixture(scope="module")
def broken_folder(setup, fixtures_dir, synthetic_tiff):
    """The broken fixture files next to one good slide (the synthetic TIFF)."""
    folder = setup["root"] / "broken_and_good"
    folder.mkdir()
    for name in BROKEN:
        shutil.copy(fixtures_dir / name, folder / name)
    shutil.copy(synthetic_tiff.path, folder / "good.tiff")
    return folder


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_one_error_per_broken_file(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == len(BROKEN), errors
    for name in BROKEN:
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert any("boxes.tiff" in line and "352.8" in line and "--mpp" in line for line in errors)


@pytest.mark.slow
def test_broken_files_get_one_error_line_each_while_the_good_slide_is_processed(setup, broken_folder):
    out, ws = setup["root"] / "out_broken", setup["root"] / "ws_broken"
    result = ugafl("uncertainty", broken_folder, "--model", setup["ckpts"]["m0"], "--method", "tta", "--passes", "4",
                   "--out", out, "--workspace", ws)
    _assert_one_error_per_broken_file(result)
    assert "good.tiff: " in result.stdout and " patches, mean uga " in result.stdout
    assert (out / "good" / "heatmap.png").is_file() and (out / "good" / "summary.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # nothing written for the broken files
    assert [p.name for p in (ws / "patch_scores").iterdir()] == ["good.tta.csv"]


@pytest.mark.slow
def test_fixtures_folder_tiny_slides_finish_with_zero_patches(setup, fixtures_dir):
    out = setup["root"] / "out_fixtures"
    result = ugafl("uncertainty", fixtures_dir, "--model", setup["ckpts"]["m0"], "--method", "mc_dropout",
                   "--passes", "2", "--out", out)
    _assert_one_error_per_broken_file(result)
    for name in TINY_SLIDES:
        assert f"{name}: 0 patches" in result.stdout, result.stdout
        summary = json.loads((out / Path(name).stem / "summary.json").read_text())
        assert summary["patches"] == 0
    assert "boxes_1.dcm" not in result.stdout and not (out / "boxes_1").exists()  # scored once, as boxes_0


@pytest.mark.slow
def test_bad_inputs_get_one_line_and_exit_2(setup, tmp_path):
    slide, ckpts = setup["slide"], setup["ckpts"]
    out = tmp_path / "out"

    unknown = ugafl("uncertainty", slide, "--model", ckpts["m0"], "--method", "dropout", "--out", out)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    # click's usage error: a usage line, a hint, and one line naming the bad value
    errors = [line for line in unknown.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "'dropout'" in errors[0] and "--method" in errors[0]

    def one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
        assert result.returncode == 2, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert result.stderr.startswith("error: ")
        for fragment in fragments:
            assert fragment in result.stderr, (fragment, result.stderr)

    missing = tmp_path / "missing.pt"
    one_line(ugafl("uncertainty", slide, "--model", missing, "--method", "tta", "--out", out),
             "missing.pt", "no such checkpoint")
    one_line(ugafl("uncertainty", slide, "--model", ckpts["m0"], "--method", "edue", "--out", out),
             "disagreement head")
    one_line(ugafl("uncertainty", slide, "--model", ckpts["m0"], "--model", ckpts["m1"], "--method", "tta", "--out", out),
             "takes one model checkpoint")
    assert not out.exists()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_uncertainty_report_rows_per_centre_and_method(setup):
    ckpts = setup["ckpts"]
    result = ugafl("uncertainty-report", "--data", setup["data"], "--model", ckpts["m0"],
                   "--ensemble", ckpts["m0"], "--ensemble", ckpts["m1"], "--edue", ckpts["edue"],
                   "--passes", "4", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    # One shifted centre (RST): its own row is the shifted figure, no pooled "shifted (n)" row.
    assert sorted((r["method"], r["centre"]) for r in rows) == sorted(
        (m, c) for m in ("ensemble", "mc_dropout", "tta", "edue") for c in ("RUMC", "RST"))
    assert not any(r["centre"].startswith("shifted") for r in rows)
    # What the figures mean is checked in closed form on a constant model (the test after next);
    # here: every figure is there and finite, and the known cases of these real models hold.
    for row in rows:
        assert row["pixels"] > 0 and row["patches"] > 0
        assert _finite(row["error_rate"]) and _finite(row["ece"]) and _finite(row["nll"])
        measures = ["entropy", "mutual_information", "uga"] + (["variance"] if row["method"] == "edue" else [])
        assert sorted(k[len("auroc_"):] for k in row if k.startswith("auroc_")) == sorted(measures)
        assert all(f"spearman_{m}" in row for m in measures)
        for m in measures:
            if 0 < row["error_rate"] < 1:  # errors and correct pixels both present: AUROC is defined
                assert _finite(row[f"auroc_{m}"]), (row["method"], row["centre"], m, row[f"auroc_{m}"])
        if row["method"] == "edue":
            assert _finite(row["edue_rater_pearson"])
            assert row["auroc_mutual_information"] == 0.5  # one member: MI is 0 everywhere, no ranking
        else:
            assert "edue_rater_pearson" not in row
    assert any(0 < r["error_rate"] < 1 for r in rows)
    # The same slides and tiles for every method: the pixel and patch counts agree.
    assert len({(r["centre"], r["pixels"], r["patches"]) for r in rows}) == 2


@pytest.mark.slow
def test_uncertainty_report_skips_methods_without_checkpoints_and_filters_centres(setup):
    result = ugafl("uncertainty-report", "--data", setup["data"], "--model", setup["ckpts"]["m0"],
                   "--methods", "tta,ensemble", "--centres", "RST", "--passes", "2")
    assert result.returncode == 0, result.stderr
    assert "skipping ensemble: no checkpoint given for it" in result.stderr
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith(("tta", "ensemble"))]
    assert {(parts[0], parts[1]) for parts in lines} == {("tta", "RST")}
    assert sorted(parts[2] for parts in lines) == ["entropy", "mutual_information", "uga"]


@pytest.mark.slow
def test_pooled_shifted_row_only_with_two_shifted_centres(setup):
    """With the reference centre absent both centres are shifted: a pooled row sums them."""
    from ugafl.common.uncertainty_methods import load_method
    from ugafl.simulations.uncertainty_report import method_quality

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        method = load_method("tta", [setup["ckpts"]["m0"]], passes=2)
        rows = method_quality(method, setup["data"], progress=False, reference="NONE")
        one = method_quality(method, setup["data"], centres=["RST"], progress=False, reference="RUMC")
    finally:
        torch.set_num_threads(before)
    by_centre = {r["centre"]: r for r in rows}
    assert set(by_centre) == {"RUMC", "RST", "shifted (2)"}
    pooled, a, b = by_centre["shifted (2)"], by_centre["RUMC"], by_centre["RST"]
    assert pooled["pixels"] == a["pixels"] + b["pixels"]
    assert pooled["patches"] == a["patches"] + b["patches"]
    expected_rate = (a["error_rate"] * a["pixels"] + b["error_rate"] * b["pixels"]) / pooled["pixels"]
    assert pooled["error_rate"] == pytest.approx(expected_rate, abs=2e-4)
    # NLL is a mean over pixels: the pooled one is the pixel-weighted mean (rows rounded to 4 places)
    expected_nll = (a["nll"] * a["pixels"] + b["nll"] * b["pixels"]) / pooled["pixels"]
    assert pooled["nll"] == pytest.approx(expected_nll, abs=2e-4)
    # One shifted centre: just its row, no pooled one.
    assert [r["centre"] for r in one] == ["RST"]
    assert one[0] == by_centre["RST"]


@pytest.mark.slow
def test_a_constant_model_gets_the_report_figures_in_closed_form(setup):
    """A model that says p(tumour) = q < 0.5 at every pixel whatever it sees (zero weights, a bias
    on its last convolution) calls nothing tumour: its errors are exactly the tumour pixels on
    tissue, so with e the error rate, ECE = |q - e| and NLL = -(e ln q + (1 - e) ln(1 - q)); and
    no uncertainty measure can rank its errors (every score is the same): AUROC 0.5."""
    from torch import nn

    from ugafl.common.uncertainty_methods import Tta
    from ugafl.simulations.uncertainty_report import method_quality

    model = build_model(TINY).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1].bias.copy_(torch.tensor([1.0, -1.0]))
        logits = model(torch.rand(2, 3, TINY.patch_size, TINY.patch_size))
    assert (logits[:, 0] == 1).all() and (logits[:, 1] == -1).all()  # the set-up, checked
    q = 1 / (1 + math.exp(2))  # softmax of (1, -1): 0.1192
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = method_quality(Tta(model, TINY, passes=2), setup["data"], progress=False)
    finally:
        torch.set_num_threads(before)
    assert [r["centre"] for r in rows] == ["RUMC", "RST"]
    for row in rows:
        e = row["error_rate"]
        assert 0.01 < e < 0.99, row  # both classes on the (macro) test slides' tissue
        assert row["ece"] == pytest.approx(abs(q - e), abs=2e-4), row
        assert row["nll"] == pytest.approx(-(e * math.log(q) + (1 - e) * math.log(1 - q)), abs=5e-4), row
        for m in ("entropy", "mutual_information", "uga"):
            assert row[f"auroc_{m}"] == 0.5, (m, row)
            assert math.isnan(row[f"spearman_{m}"]), (m, row)  # constant patch scores: no ranking
