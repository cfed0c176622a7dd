"""Uncertainty heat maps: what the rendered figure shows where (sampled through the panels'
geometry), the colour scale, grids a pixel off in size, the summary numbers, atomic writes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ugafl.common.heatmap as heatmap
from ugafl.common.heatmap import (HeatmapLayers, HeatmapStyle, render_heatmap, resample_to_grid, slide_heatmap,
                                  summary_numbers)

THUMB_MPP, MAP_MPP = 8.0, 2.0
S = int(THUMB_MPP / MAP_MPP)  # map pixels per thumbnail pixel
W, H = 400, 300  # thumbnail
BACKGROUND = (255, 255, 255)
PINK = (230, 150, 200)
CENTRE, AXES = (200.0, 150.0), (150.0, 110.0)  # tissue ellipse, thumbnail pixels
HOT = (260.0, 100.0)  # in the hot quadrant of the tissue (x > 200, y < 150), far from its edges
COLD = (140.0, 220.0)  # tissue, not hot, outside the predicted disc
GLASS = (20.0, 20.0)  # off tissue, away from the scale bar
DISC, DISC_R = (130.0, 170.0), 30.0  # predicted tumour, thumbnail pixels


@dataclass
class Case:
    thumbnail: np.ndarray
    uncertainty: np.ndarray  # at MAP_MPP
    tissue: np.ndarray  # at THUMB_MPP
    prediction: np.ndarray  # at MAP_MPP


def make_case(shape_delta: tuple[int, int] = (0, 0), hot: float = 1.0) -> Case:
    y, x = np.mgrid[:H, :W] + 0.5
    tissue = ((x - CENTRE[0]) / AXES[0]) ** 2 + ((y - CENTRE[1]) / AXES[1]) ** 2 <= 1
    thumbnail = np.empty((H, W, 3), np.uint8)
    thumbnail[:] = BACKGROUND
    thumbnail[tissue] = PINK
    mh, mw = H * S + shape_delta[0], W * S + shape_delta[1]
    my, mx = (np.mgrid[:mh, :mw] + 0.5) / S  # map pixel centres in thumbnail pixels
    uncertainty = np.where((mx > CENTRE[0]) & (my < CENTRE[1]), hot, 0.0).astype(np.float32)
    prediction = (mx - DISC[0]) ** 2 + (my - DISC[1]) ** 2 <= DISC_R**2
    return Case(thumbnail, uncertainty, tissue, prediction)


def layers(case: Case, prediction: np.ndarray | None, tissue_mpp: float = THUMB_MPP) -> HeatmapLayers:
    return HeatmapLayers(case.thumbnail, THUMB_MPP, case.uncertainty, MAP_MPP, case.tissue, tissue_mpp, prediction)


def render(case: Case, **options) -> heatmap.HeatmapRender:
    kwargs = dict(measure="mutual information (nats)", title="test slide", summary={"patches": "12"})
    kwargs.update(options)
    prediction = kwargs.pop("prediction", case.prediction)
    return render_heatmap(layers(case, prediction), HeatmapStyle(**kwargs))


def at(result: heatmap.HeatmapRender, panel: str, point: tuple[float, float]) -> np.ndarray:
    """Mean RGB of the 3x3 rendered pixels showing thumbnail point (x, y) of `panel`."""
    row, col = result.panels[panel].pixel(*point)
    return result.image[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3).mean(axis=0)


@pytest.fixture(scope="module")
def base() -> heatmap.HeatmapRender:
    return render(make_case())


def test_layout_size_and_panels(base):
    h, w, _ = base.image.shape
    assert 1400 <= w <= 2000 and 400 <= h <= 2000
    assert set(base.panels) == {"overlay", "slide"}
    for geometry in base.panels.values():
        top, left, bottom, right = geometry.bbox
        assert 0 <= top < bottom <= h and 0 <= left < right <= w
        assert (right - left) / (bottom - top) == pytest.approx(W / H, rel=0.02)  # not distorted
    assert base.panels["slide"].bbox[1] > base.panels["overlay"].bbox[3]  # side by side, slide on the right


def test_hot_region_overlaid_glass_untouched(base):
    hot, cold, glass = (at(base, "overlay", p) for p in (HOT, COLD, GLASS))
    plain_hot = at(base, "slide", HOT)
    assert np.allclose(plain_hot, PINK, atol=3)  # the comparison panel shows the tissue as scanned
    assert np.abs(hot - plain_hot).sum() > 100  # the heat map changes tissue strongly...
    assert hot.mean() > cold.mean() + 80  # ...bright where unsure, dark where confident
    assert np.abs(cold - np.array(PINK)).sum() > 100
    assert np.allclose(glass, BACKGROUND, atol=2)  # off tissue nothing is drawn
    assert np.allclose(glass, at(base, "slide", GLASS), atol=2)


def test_tumour_contour_is_cyan_and_only_with_a_prediction(base):
    def cyan_pixels(result):
        top, left, bottom, right = result.panels["overlay"].bbox
        rgb = result.image[top:bottom, left:right].astype(int)
        return int(np.count_nonzero((rgb[..., 0] < 90) & (rgb[..., 1] > 180) & (rgb[..., 2] > 200)))

    assert cyan_pixels(base) > 2 * math.pi * DISC_R  # at least one pixel per thumbnail pixel of perimeter
    assert cyan_pixels(render(make_case(), prediction=None)) == 0


@pytest.mark.parametrize("delta", [(-1, 1), (1, -1)])
def test_map_a_pixel_off_in_size(base, delta):
    case = make_case(shape_delta=delta)
    case.prediction = case.prediction[: case.prediction.shape[0] - 1]  # off by another pixel
    result = render(case)
    assert result.image.shape == base.image.shape
    for point in (HOT, COLD, GLASS):
        assert np.allclose(at(result, "overlay", point), at(base, "overlay", point), atol=3)


def test_vmax_fixed_versus_default():
    case = make_case(hot=0.5)
    doubled = make_case(hot=1.0)
    half, full = render(case, vmax=1.0), render(doubled, vmax=1.0)
    assert half.vmax == full.vmax == 1.0
    assert at(full, "overlay", HOT).mean() > at(half, "overlay", HOT).mean() + 20  # twice as unsure: brighter
    auto = render(case)  # default: the 99th percentile on tissue, so the same picture at any scale
    assert auto.vmax == pytest.approx(0.5)
    assert np.allclose(at(auto, "overlay", HOT), at(full, "overlay", HOT), atol=3)


def test_default_vmax_ignores_a_few_hot_pixels():
    case = make_case()
    y0, x0 = int(COLD[1]) * S, int(COLD[0]) * S
    case.uncertainty[y0 : y0 + 3 * S, x0 : x0 + 3 * S] = 100.0  # 9 of ~52,000 tissue pixels
    result = render(case)
    assert result.vmax == pytest.approx(1.0)
    assert at(result, "overlay", HOT).mean() > 150  # still bright


def test_nan_uncertainty_is_not_drawn():
    case = make_case()
    case.uncertainty[:] = np.nan  # nothing computed
    result = render(case)
    assert np.allclose(at(result, "overlay", HOT), PINK, atol=3)
    assert result.vmax == 1.0


def test_slide_heatmap_writes_one_png_atomically(tmp_path: Path):
    case = make_case()
    out = tmp_path / "slide.png"
    out.write_bytes(b"stale")  # replaced, not appended to
    style = HeatmapStyle("entropy (nats)", "slide", {"mean": "0.1"}, vmax=2.0)
    returned = slide_heatmap(out, layers(case, case.prediction), style)
    assert returned == out
    assert [p.name for p in tmp_path.iterdir()] == ["slide.png"]
    with Image.open(out) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        written = np.asarray(png)
    # the file holds the rendered figure, pixel for pixel (lossless)
    np.testing.assert_array_equal(written, render_heatmap(layers(case, case.prediction), style).image)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch):
    case = make_case()

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        slide_heatmap(tmp_path / "slide.png", layers(case, None), HeatmapStyle("entropy", "slide", show_slide=False))
    assert list(tmp_path.iterdir()) == []


def test_tissue_on_a_coarser_grid_and_no_slide_panel():
    case = make_case()
    coarse = case.tissue.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3)) >= 0.5  # 16 µm/px
    coarse_case = Case(case.thumbnail, case.uncertainty, coarse, case.prediction)
    result = render_heatmap(layers(coarse_case, None, tissue_mpp=2 * THUMB_MPP),
                            HeatmapStyle("entropy", "slide", show_slide=False))
    assert set(result.panels) == {"overlay"}
    assert at(result, "overlay", HOT).mean() > 150
    assert np.allclose(at(result, "overlay", GLASS), BACKGROUND, atol=2)


def test_large_thumbnail_is_drawn_from_a_shrunk_copy():
    w, h = 2600, 1300  # wide: panels stacked, each ~1200 px, so drawn from a half-size copy
    thumbnail = np.full((h, w, 3), 255, np.uint8)
    tissue = np.zeros((h, w), bool)
    tissue[200:1100, 300:2300] = True
    thumbnail[tissue] = PINK
    uncertainty = np.zeros((h, w), np.float32)  # on the thumbnail grid this time
    uncertainty[200:650, 1300:2300] = 1.0
    prediction = np.zeros((h, w), bool)
    prediction[700:1000, 500:900] = True
    result = render_heatmap(HeatmapLayers(thumbnail, THUMB_MPP, uncertainty, THUMB_MPP, tissue, THUMB_MPP, prediction),
                            HeatmapStyle("m", "t"))
    assert result.image.shape[1] <= 2000
    assert result.panels["slide"].bbox[0] > result.panels["overlay"].bbox[2]  # stacked
    top, left, bottom, right = result.panels["overlay"].bbox
    assert (right - left) / (bottom - top) == pytest.approx(2.0, rel=0.02)
    assert at(result, "overlay", (1800, 400)).mean() > 150  # hot
    assert at(result, "overlay", (1800, 900)).mean() < 120  # confident tissue
    assert np.allclose(at(result, "overlay", (100, 100)), BACKGROUND, atol=2)  # glass
    assert np.allclose(at(result, "slide", (1800, 400)), PINK, atol=3)
    row, col = result.panels["overlay"].pixel(500, 850)  # left edge of the predicted box
    strip = result.image[row - 2 : row + 3, col - 4 : col + 5].astype(int)
    assert np.any((strip[..., 0] < 90) & (strip[..., 1] > 180) & (strip[..., 2] > 200))


def test_bad_inputs_are_refused():
    case = make_case()
    with pytest.raises(ValueError, match="thumbnail"):
        render(Case(case.thumbnail.astype(np.float32), case.uncertainty, case.tissue, case.prediction))
    with pytest.raises(ValueError, match="vmax"):
        render(case, vmax=0.0)
    with pytest.raises(ValueError, match="map_mpp"):
        HeatmapLayers(case.thumbnail, THUMB_MPP, case.uncertainty, 0.0, case.tissue, THUMB_MPP)
    with pytest.raises(ValueError, match="uncertainty must be a non-empty 2-D array"):
        HeatmapLayers(case.thumbnail, THUMB_MPP, case.uncertainty[0], MAP_MPP, case.tissue, THUMB_MPP)


def test_summary_numbers_by_hand():
    mpp = 2.0  # one pixel = 4 µm² = 4e-6 mm²
    uncertainty = np.zeros((300, 500), np.float32)
    tissue = np.zeros((300, 500), bool)
    tissue[50:250, 50:450] = True  # 80,000 px = 0.32 mm²
    uncertainty[50:150, 50:450] = 1.0  # half the tissue
    uncertainty[0, 0] = 50.0  # off tissue: ignored
    prediction = np.zeros_like(tissue)
    prediction[0:100, 0:100] = True  # 10,000 px = 0.04 mm², 50 x 50 = 2,500 px of them on tissue
    numbers = summary_numbers(uncertainty, mpp, tissue, prediction)
    assert numbers["tissue_mm2"] == pytest.approx(0.32)
    assert numbers["tumour_mm2"] == pytest.approx(0.04)
    assert numbers["tumour_share_of_tissue"] == pytest.approx(2500 / 80000)
    assert numbers["mean_uncertainty"] == pytest.approx(0.5)
    assert numbers["p90_uncertainty"] == pytest.approx(1.0)
    assert "share_above_threshold" not in numbers

    uncertainty[50, 50] = np.nan  # a pixel not computed is left out
    for off_by_one in (tissue[:-1, :-1], np.pad(tissue, ((0, 1), (0, 1)))):  # cropped or padded
        numbers = summary_numbers(uncertainty, mpp, off_by_one, None, threshold=0.5)
        assert numbers["tissue_mm2"] == pytest.approx(0.32)
        assert numbers["mean_uncertainty"] == pytest.approx((40000 - 1) / (80000 - 1))
        assert numbers["share_above_threshold"] == pytest.approx((40000 - 1) / 80000)
    assert math.isnan(numbers["tumour_mm2"]) and math.isnan(numbers["tumour_share_of_tissue"])

    empty = summary_numbers(uncertainty, mpp, np.zeros_like(tissue), prediction)
    assert empty["tissue_mm2"] == 0 and math.isnan(empty["mean_uncertainty"])
    assert math.isnan(empty["tumour_share_of_tissue"]) and empty["tumour_mm2"] == pytest.approx(0.04)


def test_resample_to_grid_averages_areas_and_skips_nan(monkeypatch):
    grid = np.arange(64, dtype=np.float32).reshape(8, 8)
    halved = resample_to_grid(grid, 1.0, 2.0, (4, 4))
    assert np.allclose(halved, grid.reshape(4, 2, 4, 2).mean(axis=(1, 3)))
    assert np.allclose(resample_to_grid(np.full((4, 4), 3.0), 4.0, 1.0, (16, 16)), 3.0)  # enlarging
    mask = np.zeros((8, 8), bool)
    mask[:, :3] = True
    assert np.allclose(resample_to_grid(mask, 1.0, 4.0, (2, 2)), [[0.75, 0], [0.75, 0]])  # coverage
    with_nan = grid.copy()
    with_nan[0, 0] = np.nan
    with_nan[6:, 6:] = np.nan
    out = resample_to_grid(with_nan, 1.0, 2.0, (4, 4))
    assert out[0, 0] == pytest.approx((1 + 8 + 9) / 3) and np.isnan(out[3, 3])
    big = np.random.default_rng(0).random((203, 157)).astype(np.float32)
    shrunk, enlarged = resample_to_grid(big, 2.0, 3.0, (136, 105)), resample_to_grid(big, 3.0, 2.0, (304, 235))
    monkeypatch.setattr(heatmap, "_STRIP_ELEMENTS", 500)  # many strips: the same result
    assert np.allclose(resample_to_grid(big, 2.0, 3.0, (136, 105)), shrunk, atol=1e-5)
    assert np.allclose(resample_to_grid(big, 3.0, 2.0, (304, 235)), enlarged, atol=1e-5)
