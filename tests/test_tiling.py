"""Reading at a resolution, tissue detection and the patch grid, checked against what the
synthetic slide has drawn where (level-0 coordinates, 0.5 µm/px, levels at 0.5/1/2/4 µm/px)."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from ugafl.common.slide import open_slide
from ugafl.common.tiling import PatchLocation, patch_grid
from ugafl.common.tissue import TissueMask, detect_tissue, tissue_from_rgb


@pytest.fixture
def slide(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as opened:
        yield opened


def _blue_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels that look like the blue marker."""
    blue = (rgb[..., 2] > 120) & (rgb[..., 0] < 110)
    ys, xs = np.nonzero(blue)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --- reading at a resolution -------------------------------------------------------------------


def test_pyramid_resolution_reads_its_level_without_resampling(slide, synthetic_tiff):
    assert [lv.mpp for lv in slide.levels] == [0.5, 1.0, 2.0, 4.0]
    assert slide.best_level_for(1.0).index == 1
    region = slide.read_region((512, 256), (512, 512), 1.0)
    with openslide.OpenSlide(str(synthetic_tiff.path)) as raw:
        level1 = np.asarray(raw.read_region((512, 256), 1, (256, 256)))[..., :3]
    assert region.shape == (256, 256, 3)
    np.testing.assert_array_equal(region, level1)


def test_resolution_between_levels_is_resampled_to_size(slide):
    assert slide.best_level_for(1.5).index == 1  # the finer neighbour, then shrunk
    region = slide.read_region((300, 300), (768, 768), 1.5)
    assert region.shape == (256, 256, 3)
    region = slide.read_region((0, 0), (1000, 700), 1.5)
    assert region.shape == (233, 333, 3)  # round(1000 / 3), round(700 / 3)
    # same content as level 0 averaged 3x3: the 1.5 µm/px view of (300, 300) + 768 px
    with_level0 = slide.read_region((300, 300), (768, 768), 0.5).astype(float)
    expected = with_level0.reshape(256, 3, 256, 3, 3).mean(axis=(1, 3))
    assert np.abs(slide.read_region((300, 300), (768, 768), 1.5) - expected).mean() < 4


@pytest.mark.parametrize("mpp", [0.5, 1.0, 1.5, 2.0, 4.0])
def test_marker_appears_where_it_was_drawn(slide, synthetic_tiff, mpp):
    mx, my, mw, mh = synthetic_tiff.marker_box  # (1600, 160) + 64 px
    origin = (1480, 100)  # read a 240 x 240 level-0 box around it
    rgb = slide.read_region(origin, (240, 240), mpp)
    scale = slide.mpp / mpp  # output pixels per level-0 pixel
    assert rgb.shape == (round(240 * scale), round(240 * scale), 3)
    x0, y0, x1, y1 = _blue_box(rgb)
    expected = ((mx - origin[0]) * scale, (my - origin[1]) * scale, (mx + mw - origin[0]) * scale, (my + mh - origin[1]) * scale)
    # the level reads blur one output pixel at most at each edge
    assert np.allclose((x0, y0, x1, y1), expected, atol=1.01), ((x0, y0, x1, y1), expected)


# --- tissue detection --------------------------------------------------------------------------


def test_tissue_fraction_matches_the_drawn_ellipse_minus_hole(slide, synthetic_tiff):
    tissue = detect_tissue(slide)
    assert tissue.mpp == 8.0 and tissue.mask.shape == (96, 128)
    assert tissue.fraction == pytest.approx(synthetic_tiff.expected_fraction, abs=0.015)
    # the 150 µm hole is not filled, the 32 µm marker is a speck, not tissue
    hx, hy = synthetic_tiff.hole_centre
    assert tissue.fraction_in((int(hx) - 60, int(hy) - 60), (120, 120), slide.mpp) == 0.0
    assert tissue.fraction_in(synthetic_tiff.marker_box[:2], synthetic_tiff.marker_box[2:], slide.mpp) == 0.0
    assert tissue.fraction_in((500, 700), (256, 256), slide.mpp) == 1.0
    assert tissue.fraction_in((0, 0), (256, 256), slide.mpp) == 0.0


def test_tissue_mask_agrees_with_the_drawing_pixel_by_pixel(slide, synthetic_tiff):
    tissue = detect_tissue(slide, mpp=4.0)
    truth = synthetic_tiff.tissue_truth()[::8, ::8][: tissue.mask.shape[0], : tissue.mask.shape[1]]
    assert tissue.mask.shape == (192, 256)
    assert (tissue.mask != truth).mean() < 0.01  # only along the outlines


@pytest.mark.parametrize("background", [(205, 210, 222), (200, 200, 200), (232, 222, 200)])
def test_tinted_or_grey_glass_is_not_tissue(make_synthetic_tiff, background):
    info = make_synthetic_tiff(background=background, compression="jpeg")
    with open_slide(info.path) as tinted:
        tissue = detect_tissue(tinted)
        assert tissue.fraction == pytest.approx(info.expected_fraction, abs=0.015)
        assert tissue.fraction_in((0, 0), (2048, 200), tinted.mpp) == 0.0  # the glass strip on top
    empty = make_synthetic_tiff("empty.tiff", background=background, draw_tissue=False, levels=3)
    with open_slide(empty.path) as glass:
        assert detect_tissue(glass).fraction == 0.0


def test_tissue_from_rgb_keeps_pale_tissue_next_to_dark_tissue():
    rgb = np.full((100, 150, 3), 238, np.uint8)
    rgb[10:50, 10:70] = (225, 195, 215)  # pale stroma
    rgb[10:50, 80:140] = (150, 60, 130)  # dense, dark
    rgb[60:90, 10:140] = (120, 100, 160)
    rgb[65:80, 60:75] = 238  # a 120 µm hole at 8 µm/px
    mask = tissue_from_rgb(rgb, mpp=8.0)
    assert mask[10:50, 10:70].mean() > 0.95 and mask[10:50, 80:140].mean() > 0.95
    assert not mask[66:79, 61:74].any()  # closing may round the hole's corners, no more
    assert mask[65:80, 60:75].mean() < 0.05
    assert not mask[:, 145:].any() and not mask[95:].any()


def test_fraction_in_counts_partial_pixels_and_the_outside_as_empty():
    tissue = TissueMask(np.array([[True, False], [True, True]]), mpp=4.0)  # slide at 1 µm/px
    assert tissue.fraction == 0.75
    assert tissue.fraction_in((0, 0), (8, 8), 1.0) == 0.75
    assert tissue.fraction_in((2, 0), (4, 4), 1.0) == 0.5  # half of pixel (0,0), half of (0,1)
    assert tissue.fraction_in((0, 4), (8, 8), 1.0) == pytest.approx(0.5)  # lower half is outside
    assert tissue.fraction_in((100, 100), (8, 8), 1.0) == 0.0


def test_box_fractions_equal_direct_counts_from_an_integer_table():
    """The summed-area table is integer counts (4 bytes a mask pixel, built in place); any box's
    fraction equals the mask's area-weighted count inside it, computed directly."""
    rng = np.random.default_rng(0)
    mask = rng.random((61, 83)) < 0.4
    tissue = TissueMask(mask, mpp=4.0)  # slide at 1 µm/px: 4 level-0 px per mask pixel
    assert tissue._integral.dtype == np.int32 and tissue._integral[-1, -1] == mask.sum()
    for _ in range(200):
        x, y = rng.uniform(-20, 340), rng.uniform(-20, 250)
        w, h = rng.uniform(1, 120), rng.uniform(1, 120)
        # direct: each mask pixel weighted by the share of it inside the box (the outside counts as glass)
        xs, ys = np.arange(mask.shape[1]) * 4.0, np.arange(mask.shape[0]) * 4.0
        cover_x = np.clip(np.minimum(xs + 4, x + w) - np.maximum(xs, x), 0, None) / 4
        cover_y = np.clip(np.minimum(ys + 4, y + h) - np.maximum(ys, y), 0, None) / 4
        direct = (cover_y[:, None] * cover_x[None, :] * mask).sum() * 16 / (w * h)
        assert tissue.fraction_in((x, y), (w, h), 1.0) == pytest.approx(min(direct, 1.0), abs=1e-9)


# --- patch grid -------------------------------------------------------------------------------


def test_grid_at_two_resolutions(slide):
    everything = TissueMask(np.ones((96, 128), bool), 8.0)
    at1 = patch_grid(slide, 1.0, 256, tissue=everything, min_tissue=0)
    assert len(at1) == 4 * 3
    assert {(p.width, p.height) for p in at1} == {(512, 512)}
    assert [(p.x, p.y) for p in at1[:5]] == [(0, 0), (512, 0), (1024, 0), (1536, 0), (0, 512)]
    at2 = patch_grid(slide, 2.0, 256, tissue=everything, min_tissue=0)
    assert [(p.x, p.y, p.width) for p in at2] == [(0, 0, 1024), (1024, 0, 1024), (0, 1024, 1024), (1024, 1024, 1024)]
    # the last row runs past the bottom edge (1536): the tissue fraction counts that part as empty
    assert at2[2].tissue_fraction == pytest.approx(0.5)
    assert at2[0].tissue_fraction == 1.0


def test_grid_with_overlap_and_with_non_integer_stride(slide):
    everything = TissueMask(np.ones((96, 128), bool), 8.0)
    overlapping = patch_grid(slide, 1.0, 256, stride=128, tissue=everything, min_tissue=0)
    xs = sorted({p.x for p in overlapping})
    ys = sorted({p.y for p in overlapping})
    assert xs == list(range(0, 1537, 256)) and ys == list(range(0, 1025, 256))
    # 0.7 µm/px: patches are 140 level-0 px, starts every 46.2 px, rounded without drift
    odd = patch_grid(slide, 0.7, 100, stride=33, tissue=everything, min_tissue=0)
    xs = sorted({p.x for p in odd})
    assert xs == [round(k * 46.2) for k in range(len(xs))]
    assert xs[-1] + 140 >= 2048 > xs[-2] + 140
    assert {p.width for p in odd} == {140}


def test_grid_keeps_tissue_patches_with_matching_fractions(slide, synthetic_tiff):
    tissue = detect_tissue(slide)
    # drawn fractions of the 4 x 3 grid: .02 .38 .38 .02 / .30 .99 .74 .31 / .02 .38 .38 .02
    patches = patch_grid(slide, 1.0, 256, tissue=tissue, min_tissue=0.2)
    assert patches == sorted(patches, key=lambda p: (p.y, p.x))  # row-major
    positions = [(p.x, p.y) for p in patches]
    assert positions == [(512, 0), (1024, 0), (0, 512), (512, 512), (1024, 512), (1536, 512), (512, 1024), (1024, 1024)]
    truth = synthetic_tiff.tissue_truth()
    for patch in patches:
        drawn = truth[patch.y : patch.y + patch.height, patch.x : patch.x + patch.width]
        drawn_fraction = drawn.sum() / (patch.width * patch.height)
        assert patch.tissue_fraction >= 0.2
        assert patch.tissue_fraction == pytest.approx(drawn_fraction, abs=0.03)
    assert [(p.x, p.y) for p in patch_grid(slide, 1.0, 256, tissue=tissue, min_tissue=0.5)] == [(512, 512), (1024, 512)]
    assert len(patch_grid(slide, 1.0, 256, tissue=tissue, min_tissue=0)) == 12
    assert patch_grid(slide, 1.0, 256, min_tissue=0.2) == patches  # detects tissue itself


def test_grid_on_a_slide_smaller_than_one_patch(fixtures_dir):
    with open_slide(fixtures_dir / "small.svs") as small:
        patches = patch_grid(small, 0.5, 256, min_tissue=0)
    assert len(patches) == 1
    assert patches[0] == PatchLocation(0, 0, 257, 257, 0.0)  # round(256 * 0.5 / 0.499)


def test_grid_rejects_bad_arguments(slide):
    with pytest.raises(ValueError):
        patch_grid(slide, 1.0, 0)
    with pytest.raises(ValueError):
        patch_grid(slide, -1.0, 256)
    with pytest.raises(ValueError):
        patch_grid(slide, 1.0, 256, min_tissue=1.5)


def test_tissue_detection_in_strips_is_the_whole_image_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips of rows and the histogram percentile give exactly the one-pass result (the glass
    colour is numpy's percentile of rgb + 1), however the strips fall."""
    from ugafl.common import tissue

    rng = np.random.default_rng(3)
    rgb = np.full((203, 151, 3), 235, np.uint8)
    rgb[40:160, 30:120] = rng.integers(60, 200, (120, 90, 3), dtype=np.uint8)  # tissue on glass
    rgb[:, :, 2] -= rng.integers(0, 6, rgb.shape[:2], dtype=np.uint8)  # glass that is not quite flat
    expected = np.percentile(rgb.reshape(-1, 3).astype(np.float32) + 1, tissue.BACKGROUND_PERCENTILE, axis=0)
    np.testing.assert_allclose(tissue._glass(rgb), expected, rtol=0, atol=1e-5)
    monkeypatch.setattr(tissue, "STRIP_ROWS", 10_000)
    whole = tissue.tissue_from_rgb(rgb, mpp=8.0)
    assert 0.2 < whole.mean() < 0.6
    for rows in (1, 7, 64):
        monkeypatch.setattr(tissue, "STRIP_ROWS", rows)
        assert np.array_equal(tissue.tissue_from_rgb(rgb, mpp=8.0), whole), rows
