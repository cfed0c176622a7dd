"""Opening slides: real vendor fixtures, resolution checks, one-line errors, region reads."""

from __future__ import annotations

import logging

import numpy as np
import openslide
import pytest

from ugafl.common.errors import SlideError
from ugafl.common.slide import MPP_RANGE, check_readable, open_slide


@pytest.mark.parametrize(
    ("name", "vendor"), [("small.svs", "aperio"), ("boxes_0.dcm", "dicom"), ("boxes_1.dcm", "dicom")]
)
def test_vendor_fixtures_open_with_their_resolution(fixtures_dir, name, vendor):
    with open_slide(fixtures_dir / name) as slide:
        assert slide.vendor == vendor
        assert slide.mpp == pytest.approx(0.499)
        assert slide.dimensions == (16, 16)
        assert [(lv.width, lv.height, lv.downsample) for lv in slide.levels] == [(16, 16, 1.0)]
        check_readable(slide)
        region = slide.read_region((0, 0), (16, 16), slide.mpp)
        assert region.shape == (16, 16, 3) and region.dtype == np.uint8
    # the file's own pixels, as OpenSlide reads them (opaque: alpha 255 everywhere), not padding
    with openslide.OpenSlide(str(fixtures_dir / name)) as raw:
        rgba = np.asarray(raw.read_region((0, 0), 0, (16, 16)))
    assert (rgba[..., 3] == 255).all()
    np.testing.assert_array_equal(region, rgba[..., :3])


def test_implausible_resolution_is_refused_with_advice(fixtures_dir):
    path = fixtures_dir / "boxes.tiff"
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    message = str(caught.value)
    assert message == (
        f"{path}: level-0 resolution 352.8 µm/px is outside the plausible range 0.1-20 µm/px "
        "(the file's resolution tags are probably wrong); pass --mpp VALUE to override"
    )


def test_override_opens_all_levels_with_derived_resolutions(fixtures_dir):
    with open_slide(fixtures_dir / "boxes.tiff", mpp=0.5) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.mpp == 0.5
        assert [(lv.width, lv.height) for lv in slide.levels] == [(300, 250), (150, 125), (75, 62), (37, 31)]
        mpps = [lv.mpp for lv in slide.levels]
        assert mpps[:2] == [0.5, 1.0]
        assert mpps[2] == pytest.approx(2.008, abs=1e-3) and mpps[3] == pytest.approx(4.043, abs=1e-3)
        assert [slide.best_level_for(m).index for m in (0.2, 0.5, 0.9, 1.0, 1.9, 2.0, 3.9, 100.0)] == [
            0, 0, 0, 1, 1, 2, 2, 3,
        ]
        check_readable(slide)
        region = slide.read_region((0, 0), (300, 250), 2.0)
        assert region.shape == (62, 75, 3)


@pytest.mark.parametrize("bad", [MPP_RANGE[0] / 2, MPP_RANGE[1] * 2, float("nan")])
def test_override_is_checked_too(fixtures_dir, bad):
    with pytest.raises(SlideError, match=r"boxes\.tiff: the given resolution .* plausible range 0\.1-20"):
        open_slide(fixtures_dir / "boxes.tiff", mpp=bad)


def test_unopenable_file(fixtures_dir):
    path = fixtures_dir / "unopenable.tiff"
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    assert str(caught.value) == f"{path}: cannot be opened: Unsupported TIFF compression: 52479"


def test_not_a_slide(fixtures_dir):
    path = fixtures_dir / "boxes.png"
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    assert str(caught.value) == f"{path}: not a slide format OpenSlide can read"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.svs"
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    assert str(caught.value) == f"{path}: no such file"


def test_file_without_resolution(make_synthetic_tiff):
    info = make_synthetic_tiff(mpp=None, size=(512, 512), levels=1)
    with pytest.raises(SlideError) as caught:
        open_slide(info.path)
    assert str(caught.value) == f"{info.path}: the file records no resolution (mpp); pass --mpp VALUE to set it"
    with open_slide(info.path, mpp=0.25) as slide:
        assert slide.mpp == 0.25


def test_anisotropic_resolution_uses_the_mean_and_warns(make_synthetic_tiff, caplog):
    info = make_synthetic_tiff(mpp=0.5, mpp_y=0.6, size=(512, 512), levels=1)
    with caplog.at_level(logging.WARNING, logger="ugafl"):
        with open_slide(info.path) as slide:
            assert slide.mpp == pytest.approx(0.55)
    assert any("x and y resolution differ" in r.getMessage() for r in caplog.records)


def test_slide_that_breaks_mid_read(fixtures_dir):
    path = fixtures_dir / "unreadable.svs"
    with open_slide(path) as slide:  # opening works: the damage is in the tile data
        assert slide.mpp == pytest.approx(0.499)
        with pytest.raises(SlideError) as caught:
            check_readable(slide)
        assert str(caught.value) == f"{path}: cannot be read: Bogus marker length"
        # OpenSlide errors are sticky; later reads still give a SlideError, never an OpenSlideError
        with pytest.raises(SlideError, match="unreadable.svs"):
            slide.read_region((0, 0), (8, 8), slide.mpp)
        assert slide.dimensions == (16, 16)  # cached at open: still answers


def test_closed_slide_refuses_reads(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as slide:
        pass
    with pytest.raises(ValueError, match="closed"):
        slide.read_region((0, 0), (16, 16), 0.5)
    slide.close()  # idempotent


def test_read_region_pads_white_outside_the_slide(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as slide:
        region = slide.read_region((1900, 1400), (512, 512), 1.0)
    assert region.shape == (256, 256, 3)
    # Level 1 (1 µm/px) is 1024 x 768 px: the slide ends 74 px across and 68 px down the region.
    assert (region[:, 74:] == 255).all() and (region[68:, :] == 255).all()  # white past x=2048, y=1536
    with openslide.OpenSlide(str(synthetic_tiff.path)) as raw:  # before that, the slide's own pixels
        np.testing.assert_array_equal(region[:68, :74], np.asarray(raw.read_region((1900, 1400), 1, (74, 68)))[..., :3])


def test_read_region_finer_than_level_zero_upsamples(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as slide:
        assert slide.best_level_for(0.25).index == 0
        region = slide.read_region((1000, 700), (100, 50), 0.25)
        level0 = slide.read_region((1000, 700), (100, 50), 0.5)
    assert region.shape == (100, 200, 3)
    # the same place, each level-0 pixel about 2 x 2 output pixels (the box crosses the hole's
    # edge; 1.5 grey levels off on average, 3 or more if it were read one level-0 px off)
    doubled = level0.repeat(2, axis=0).repeat(2, axis=1).astype(int)
    assert np.abs(region.astype(int) - doubled).mean() < 2.5


def test_thumbnail_size_and_actual_resolution(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as slide:
        rgb, mpp = slide.thumbnail(8.0)
        assert rgb.shape == (96, 128, 3) and mpp == 8.0
        rgb, mpp = slide.thumbnail(3.0)
        assert rgb.shape == (256, 341, 3) and mpp == pytest.approx(0.5 * 2048 / 341)
        # level-0 (700, 900) is inside the drawn ellipse, (1150, 700) in its hole
        assert synthetic_tiff.tissue_truth()[900, 700] and not synthetic_tiff.tissue_truth()[700, 1150]
        tissue = rgb[round(900 * 0.5 / mpp), round(700 * 0.5 / mpp)].astype(int)
        assert np.abs(tissue - synthetic_tiff.tissue_colour).max() < 12
        hole = rgb[round(700 * 0.5 / mpp), round(1150 * 0.5 / mpp)].astype(int)
        assert np.abs(hole - synthetic_tiff.background).max() < 12


def test_bad_arguments_are_value_errors(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as slide:
        with pytest.raises(ValueError):
            slide.read_region((0, 0), (0, 10), 1.0)
        with pytest.raises(ValueError):
            slide.best_level_for(0.0)
