"""Overlays in the slide's frame (common.overlay): the predicted tumour and the uncertainty as
pyramidal TIFFs, written from the stream, that OpenSlide reads back pixel for pixel where the
patches were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from ugafl.common.model import ModelConfig, build_model
from ugafl.common.overlay import OverlayWriter, overlay_downsample, overlay_scale
from ugafl.common.slide import open_slide
from ugafl.common.uncertainty_engine import slide_uncertainty
from ugafl.common.uncertainty_methods import Tta

CFG = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0)


def test_the_overlay_level_is_the_finest_power_of_two_not_coarser_than_the_model():
    assert overlay_downsample(0.24, 2.0) == 8  # 1.92 µm/px: level 3 of a Camelyon slide
    assert overlay_downsample(0.5, 2.0) == 4
    assert overlay_downsample(0.25, 2.0) == 8
    assert overlay_downsample(2.0, 2.0) == 1
    assert overlay_downsample(4.0, 2.0) == 1


@pytest.fixture(scope="module")
def written(synthetic_tiff, tmp_path_factory):
    out = tmp_path_factory.mktemp("overlay")
    torch.manual_seed(0)
    method = Tta(build_model(CFG), CFG, passes=2)
    batches = []
    with open_slide(synthetic_tiff.path) as slide:
        writer = OverlayWriter(slide, CFG.mpp, CFG.patch_size, "uga", overlay_scale("uga"), out)
        result = slide_uncertainty(method, slide, sinks=(writer.add, batches.append))
        paths = writer.close()
    return out, paths, result, batches


def test_overlays_are_pyramids_in_the_slides_frame(synthetic_tiff, written):
    out, paths, _, _ = written
    assert [p.name for p in paths] == ["tumour_overlay.tif", "uncertainty_overlay.tif"]
    assert sorted(p.name for p in out.iterdir()) == ["tumour_overlay.tif", "uncertainty_overlay.tif"]
    assert not [p for p in out.parent.iterdir() if "overlay-" in p.name]  # no temp left beside it
    for path in paths:
        with open_slide(path) as overlay:
            assert overlay.mpp == pytest.approx(2.0)  # 0.5 µm/px x 4
            assert overlay.dimensions == (synthetic_tiff.width // 4, synthetic_tiff.height // 4)
            assert [level.downsample for level in overlay.levels] == pytest.approx([1.0, 2.0][: len(overlay.levels)])
    description = json.loads(tifffile.TiffFile(paths[1]).pages[0].description)
    assert description["measure"] == "uga" and description["scale"] == pytest.approx(2 * np.log(2))


def test_overlay_pixels_are_the_streamed_patches(written):
    _, paths, result, batches = written
    mask = tifffile.imread(paths[0], level=0)
    unc = tifffile.imread(paths[1], level=0)
    seen = np.zeros(mask.shape, bool)
    for res in batches:
        for k, loc in enumerate(res.locations):
            y, x = loc.y // 4, loc.x // 4  # level-0 px to overlay px (2 µm/px here, the model's)
            box = (slice(y, y + 64), slice(x, x + 64))
            want = ((res.prob[k] >= 0.5) & res.tissue[k]).astype(np.uint8)
            got = mask[box]
            assert np.array_equal(got, want[: got.shape[0], : got.shape[1]])
            u = np.where(res.tissue[k], np.clip(np.round(255 * res.maps["uga"][k] / overlay_scale("uga")), 1, 255), 0)
            assert np.array_equal(unc[box], u[: got.shape[0], : got.shape[1]].astype(np.uint8))
            seen[box] = True
    assert seen.any() and not unc[~seen].any() and not mask[~seen].any()  # nothing where no patch was computed
    assert len(result.patches) == sum(len(b.locations) for b in batches)



def test_a_discarded_overlay_leaves_nothing(synthetic_tiff, tmp_path):
    """A slide that fails half-way: no output folder, no temp files."""
    out = tmp_path / "slide"
    with open_slide(synthetic_tiff.path) as slide:
        writer = OverlayWriter(slide, CFG.mpp, CFG.patch_size, "uga", overlay_scale("uga"), out)
    writer.discard()
    assert list(tmp_path.iterdir()) == []
