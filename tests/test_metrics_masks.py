"""Dice from pixel counts (with the tumour-free rule), mask resampling onto slide regions, configs."""

import numpy as np
import pytest

from ugafl.common.config import load_config
from ugafl.common.errors import ConfigError
from ugafl.common.masks import MaskImage, read_mask, write_mask
from ugafl.common.metrics import Counts, confusion


def test_dice_from_counts_and_pooling():
    truth = np.zeros((10, 10), bool)
    truth[:5] = True  # 50 px
    pred = np.zeros_like(truth)
    pred[2:7] = True  # 30 overlap, 20 false positive
    c = confusion(pred, truth)
    assert (c.tp, c.fp, c.fn) == (30, 20, 20)
    assert c.dice == pytest.approx(60 / 100)
    negative = confusion(pred, np.zeros_like(truth))
    assert negative.dice is None  # undefined on a tumour-free slide...
    pooled = c + negative
    assert pooled.pooled_dice == pytest.approx(60 / (60 + 70 + 20))  # ...but its false positives count
    assert Counts(0, 0, 0).pooled_dice == 1.0


def test_confusion_refuses_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_mask_region_maps_level0_boxes_to_the_mask_grid(tmp_path):
    array = np.zeros((100, 200), bool)  # mask at 1 µm/px
    array[20:40, 50:90] = True  # x 50-90 µm, y 20-40 µm
    write_mask(tmp_path / "m.tif", array, 1.0)
    loaded, mpp = read_mask(tmp_path / "m.tif")
    assert mpp == pytest.approx(1.0) and np.array_equal(loaded, array)
    mask = MaskImage(loaded, mpp)
    # Slide level 0 at 0.5 µm/px: the box (100, 40) of size (80, 40) level-0 px is x 50-90, y 20-40 µm.
    region = mask.region((100, 40), (80, 40), slide_mpp=0.5, mpp=2.0)
    assert region.shape == (10, 20)
    assert region.min() == pytest.approx(1.0)
    # Half outside the mask on the right: the outside part reads as 0, never wraps.
    edge = mask.region((360, 0), (80, 80), slide_mpp=0.5, mpp=1.0)
    assert edge.shape == (40, 40) and edge[:, 20:].max() == 0.0


def test_config_file_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml \[train\] stepz: unknown key \(did you mean steps\?\)"):
        load_config(bad)
    bad.write_text("[trian]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(bad)
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_demo_config_loads():
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
    cfg = load_config(path)
    raw = tomllib.loads(path.read_text())
    assert cfg.model.arch == "unet" and cfg.model.mpp == 2.0
    # the typed sections hold the file's own values
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.crop) == (
        raw["train"]["steps"], raw["train"]["batch_size"], raw["train"]["crop"])
    assert cfg.model.patch_size == raw["model"]["patch_size"]
