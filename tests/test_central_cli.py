"""`ugafl train-central` and `ugafl evaluate` end to end, as a user runs them, on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ugafl.common.checkpoint import load_checkpoint
from ugafl.common.manifest import load_manifest
from ugafl.simulations.synth import SynthConfig, generate_dataset

UGAFL = Path(sys.executable).with_name("ugafl")
TINY = """
[model]
arch = "unet"
mpp = 2.0
patch_size = 128
channels = [8, 16, 32]

[train]
steps = 12
batch_size = 4
crop = 64

[central]
centre = "RUMC"
patches_per_slide = 12
bank_patch_size = 96
"""


def ugafl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("central")
    data = root / "data"
    generate_dataset(data, SynthConfig(slides_per_centre=2, seed=3, centres=("RUMC", "RST")), workers=2, progress=False)
    config = root / "tiny.toml"
    config.write_text(TINY)
    ckpt = root / "central.pt"
    result = ugafl("train-central", "--data", str(data), "--out", str(ckpt), "--config", str(config))
    assert result.returncode == 0, result.stderr
    return data, ckpt, config


@pytest.mark.slow
def test_train_central_writes_a_self_describing_checkpoint(trained):
    data, ckpt, _ = trained
    loaded = load_checkpoint(ckpt)
    assert loaded.model_config.channels == (8, 16, 32)
    summary = loaded.meta["data_summary"]
    assert summary["centre"] == "RUMC"
    # Only RUMC's training slides: its test slide and every other centre stay unseen.
    train_ids = [s.slide_id for s in load_manifest(data).select(centre="RUMC", split="train")]
    assert summary["slides"] == train_ids
    assert summary["patches"] == 12 * len(train_ids)
    assert loaded.meta["train_config"]["steps"] == 12
    # The recorded tumour share is that of the bank it trained on, rebuilt here from the same seed.
    from ugafl.common.central_bank import CentralConfig, build_bank

    bank, slides = build_bank(data, loaded.model_config, CentralConfig(centre="RUMC", patches_per_slide=12,
                                                                       bank_patch_size=96),
                              loaded.meta["train_config"]["seed"], progress=False)
    assert slides == train_ids and len(bank.labels) == summary["patches"]
    assert summary["tumour_pixel_fraction"] == round(float(bank.labels.mean()), 4)
    assert 0 < summary["tumour_pixel_fraction"] < 1  # (both classes in the bank)


@pytest.mark.slow
def test_evaluate_reports_dice_per_slide_and_per_centre(trained):
    data, ckpt, _ = trained
    result = ugafl("evaluate", "--model", str(ckpt), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = load_manifest(data)
    test_slides = {s.slide_id: s for s in manifest.select(split="test")}
    assert {s["slide_id"] for s in report["slides"]} == set(test_slides)
    assert [c["centre"] for c in report["centres"]] == ["RUMC", "RST"]
    for row in report["slides"]:
        rec = test_slides[row["slide_id"]]
        true_mm2 = sum(r.area_um2 for r in rec.tumour_regions) / 1e6
        # The truth the model is scored against is the manifest's tumour, resampled to 2 µm/px.
        assert row["tumour_mm2"] == pytest.approx(true_mm2, rel=0.05)
        assert row["tumour_mm2"] == pytest.approx((row["tp"] + row["fn"]) * 0.002**2, abs=1e-4)  # 2 µm px
        assert row["dice"] == pytest.approx(2 * row["tp"] / (2 * row["tp"] + row["fp"] + row["fn"]))
    for centre in report["centres"]:
        rows = [s for s in report["slides"] if s["centre"] == centre["centre"]]
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        assert centre["pooled_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)
    assert "tumour-free slides" in report["rule"]

    table = ugafl("evaluate", "--model", str(ckpt), "--data", str(data), "--centres", "RST")
    assert table.returncode == 0, table.stderr
    assert "RST_001" in table.stdout and "RUMC_001" not in table.stdout and "pooled Dice" in table.stdout


@pytest.mark.slow
def test_bad_inputs_get_one_line(trained, tmp_path):
    data, ckpt, config = trained
    missing = ugafl("evaluate", "--model", str(ckpt), "--data", str(tmp_path))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "no dataset manifest" in missing.stderr
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    bad = ugafl("evaluate", "--model", str(broken), "--data", str(data))
    assert bad.returncode == 2 and "broken.pt: not a readable checkpoint" in bad.stderr and "Traceback" not in bad.stderr
    nocentre = tmp_path / "c.toml"
    nocentre.write_text(TINY.replace('centre = "RUMC"', 'centre = "XYZ"'))
    refused = ugafl("train-central", "--data", str(data), "--out", str(tmp_path / "x.pt"), "--config", str(nocentre))
    assert refused.returncode == 2 and "no training slides of centre 'XYZ'" in refused.stderr
    assert not (tmp_path / "x.pt").exists()

    kept = tmp_path / "kept.pt"
    kept.write_bytes(ckpt.read_bytes())
    again = ugafl("train-central", "--data", str(data), "--out", str(kept), "--config", str(config), "--steps", "1")
    assert again.returncode == 2 and f"--out {kept}: exists" in again.stderr and kept.read_bytes() == ckpt.read_bytes()
    forced = ugafl("train-central", "--data", str(data), "--out", str(kept), "--config", str(config), "--steps", "1",
                   "--force")
    assert forced.returncode == 0, forced.stderr
    assert kept.read_bytes() != ckpt.read_bytes()
