"""Uncertainty heat maps a pathologist reads at a glance: one PNG per slide with the per-pixel
uncertainty laid over the tissue of the thumbnail (nothing is drawn on glass), the tissue and the
model's tumour outlined, a colour bar, a 1 mm scale bar, the slide as scanned beside it for
comparison and a few summary numbers. What is drawn comes in a `HeatmapLayers` (the maps and their
mpp), how it is labelled and scaled in a `HeatmapStyle`; the figure's furniture (layout, outlines,
scale bar, info column) lives in `ugafl.common.heatmap_figure`.

Frames: every grid (thumbnail, uncertainty map, tissue mask, prediction) starts at the slide's
top-left corner; pixel (i, j) of a grid at `mpp` µm/px covers the box starting at (j, i) * mpp µm.
Grids may differ from the exact size by a pixel or so from rounding: what is missing at the
right or bottom edge repeats the last row/column, what is beyond the thumbnail is ignored.
Everything is resampled in strips onto the thumbnail grid, or for a thumbnail wider than its
panel has pixels onto the thumbnail shrunk by a whole factor, so memory beyond the caller's own
arrays is bounded by the thumbnail size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ugafl.common.atomic import atomic_write
from ugafl.common.heatmap_figure import (
    DPI,
    FIG_WIDTH_IN,
    TISSUE_COLOUR,
    TUMOUR_COLOUR,
    PanelGeometry,
    draw_info_panel,
    draw_outline,
    draw_scale_bar,
    empty_figure,
    panel_geometry,
)

__all__ = ["ALPHA", "CMAP", "DPI", "FIG_WIDTH_IN", "TISSUE_COLOUR", "TUMOUR_COLOUR", "VMAX_PERCENTILE",
           "HeatmapLayers", "HeatmapRender", "HeatmapStyle", "PanelGeometry", "render_heatmap",
           "resample_to_grid", "slide_heatmap", "summary_numbers"]

CMAP = "inferno"  # perceptually uniform; dark = confident, bright = unsure
ALPHA = 0.65  # opacity of the heat map over tissue (off tissue: 0)
VMAX_PERCENTILE = 99.0  # default top of the colour scale: this percentile on tissue
_STRIP_ELEMENTS = 1 << 22  # source pixels resampled at once (16 MiB as float32)


@dataclass(frozen=True, eq=False)
class HeatmapLayers:
    """What is drawn, each grid at its own resolution (µm/px): `thumbnail` uint8 RGB (h, w, 3) at
    `thumb_mpp`; `uncertainty` float (H, W) at `map_mpp` (NaN = not computed, drawn as nothing);
    `tissue` bool at `tissue_mpp`; `prediction` bool predicted tumour at `map_mpp`, or None.
    Refuses (ValueError) a thumbnail that is not RGB uint8, an empty or non-2-D map, an mpp <= 0."""

    thumbnail: np.ndarray
    thumb_mpp: float
    uncertainty: np.ndarray
    map_mpp: float
    tissue: np.ndarray
    tissue_mpp: float
    prediction: np.ndarray | None = None

    def __post_init__(self) -> None:
        thumbnail = np.asarray(self.thumbnail)
        if (thumbnail.ndim != 3 or thumbnail.shape[2] not in (3, 4) or thumbnail.dtype != np.uint8
                or 0 in thumbnail.shape):
            raise ValueError(f"thumbnail must be uint8 RGB (h, w, 3), got {thumbnail.dtype} {thumbnail.shape}")
        for name in ("uncertainty", "tissue", "prediction"):
            array = getattr(self, name)
            if array is not None and (np.ndim(array) != 2 or 0 in np.shape(array)):
                raise ValueError(f"{name} must be a non-empty 2-D array, got shape {np.shape(array)}")
        for name in ("thumb_mpp", "map_mpp", "tissue_mpp"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, eq=False)
class HeatmapStyle:
    """How it is labelled and scaled: `measure` labels the colour bar, `title` heads the figure,
    `summary` (key -> formatted value) fills the side panel. The colour scale runs from 0 to `vmax`
    (None: the 99th percentile of the uncertainty on tissue as drawn, so a few hot pixels don't
    wash out the map; pass one `vmax` to several slides to compare them). `show_slide=False`
    leaves out the panel with the slide as scanned. Refuses (ValueError) a `vmax` <= 0."""

    measure: str
    title: str
    summary: Mapping[str, str] | None = None
    vmax: float | None = None
    show_slide: bool = True

    def __post_init__(self) -> None:
        if self.vmax is not None and not self.vmax > 0:
            raise ValueError(f"vmax must be positive, got {self.vmax}")


@dataclass(frozen=True, eq=False)
class HeatmapRender:
    image: np.ndarray  # uint8 RGB (H, W, 3): the whole figure, exactly as written to the PNG
    panels: dict[str, PanelGeometry]  # "overlay" and, when shown, "slide"
    vmax: float  # top of the colour scale used


@dataclass(frozen=True, eq=False)
class _Heat:
    """The uncertainty as drawn on the display grid."""

    overlay: np.ndarray  # uint8 RGBA: the colour-mapped uncertainty, transparent off tissue
    tissue_cover: np.ndarray  # float32 0..1
    tumour_cover: np.ndarray | None  # float32 0..1, None without a prediction
    vmax: float  # top of the colour scale
    auto_vmax: bool  # vmax came from the percentile, not from the caller
    clipped: bool  # some tissue is hotter than vmax


def slide_heatmap(out: Path, layers: HeatmapLayers, style: HeatmapStyle) -> Path:
    """Write the heat map PNG of one slide (`render_heatmap`) to `out` atomically and return `out`."""
    render = render_heatmap(layers, style)
    return atomic_write(out, lambda tmp: Image.fromarray(render.image).save(tmp, format="PNG", dpi=(DPI, DPI)))


def render_heatmap(layers: HeatmapLayers, style: HeatmapStyle) -> HeatmapRender:
    """The heat map figure of one slide as an RGB array, with where its image panels are."""
    thumbnail = np.asarray(layers.thumbnail)[..., :3]
    shape = thumbnail.shape[:2]
    has_prediction = layers.prediction is not None
    fig, layout = empty_figure(shape, style.show_slide, has_prediction, style.summary)
    # Draw on a display grid: the thumbnail shrunk by a whole factor to no fewer pixels than the
    # panel has (matplotlib holds several float copies of each image it draws).
    factor = max(1, int(shape[1] // layout["panel_px"]))
    display = np.asarray(Image.fromarray(thumbnail).reduce(factor)) if factor > 1 else thumbnail
    heat = _heat(layers, style.vmax, display.shape[:2], layers.thumb_mpp * factor)

    extent = (0, display.shape[1] * factor, display.shape[0] * factor, 0)  # thumbnail pixel coordinates
    ax = layout["overlay"]
    ax.imshow(display, extent=extent, interpolation="antialiased")
    ax.imshow(heat.overlay, extent=extent, interpolation="antialiased")
    draw_outline(ax, heat.tissue_cover, factor, TISSUE_COLOUR, 0.7)
    if heat.tumour_cover is not None:
        draw_outline(ax, heat.tumour_cover, factor, TUMOUR_COLOUR, 1.6)
    draw_scale_bar(ax, shape, layers.thumb_mpp)
    ax.set_title("model uncertainty on tissue", fontsize=11, loc="left")
    if style.show_slide:
        ax_slide = layout["slide"]
        ax_slide.imshow(display, extent=extent, interpolation="antialiased")
        draw_scale_bar(ax_slide, shape, layers.thumb_mpp)
        ax_slide.set_title("slide as scanned", fontsize=11, loc="left")

    _colour_bar(fig, layout["cbar"], heat, style.measure)
    fig.text(layout["margin"], 1 - layout["title_y"], style.title, fontsize=14, fontweight="bold", va="center",
             ha="left")
    scale_note = "99th percentile on tissue" if heat.auto_vmax else "fixed, shared across slides"
    draw_info_panel(layout["info"], layout["info_h"], has_prediction, style.summary, f"0 – {heat.vmax:.3g}",
                    scale_note)

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    panels = {name: panel_geometry(layout[name], shape, image.shape[0]) for name in ("overlay", "slide")
              if name in layout}
    fig.clear()
    return HeatmapRender(image=image, panels=panels, vmax=float(heat.vmax))


def _heat(layers: HeatmapLayers, vmax: float | None, grid: tuple[int, int], grid_mpp: float) -> _Heat:
    """The layers resampled onto the display `grid` (at `grid_mpp` µm/px) and colour-mapped from 0
    to `vmax` (None: the `VMAX_PERCENTILE` of the uncertainty on tissue)."""
    values = resample_to_grid(layers.uncertainty, layers.map_mpp, grid_mpp, grid)
    tissue_cover = resample_to_grid(layers.tissue, layers.tissue_mpp, grid_mpp, grid)
    shown = (np.nan_to_num(tissue_cover) >= 0.5) & np.isfinite(values)
    tumour_cover = (None if layers.prediction is None
                    else resample_to_grid(layers.prediction, layers.map_mpp, grid_mpp, grid))

    auto_vmax = vmax is None
    if vmax is None:
        vmax = float(np.percentile(values[shown], VMAX_PERCENTILE)) if shown.any() else 0.0
        if not vmax > 0:
            finite_max = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
            vmax = finite_max if finite_max > 0 else 1.0
    clipped = bool(shown.any() and np.max(values[shown]) > vmax)

    scaled = np.divide(values, np.float32(vmax), out=np.zeros_like(values), where=shown)
    del values
    overlay = colormaps[CMAP](np.clip(scaled, 0.0, 1.0, out=scaled), bytes=True)  # uint8 RGBA: small
    del scaled
    overlay[..., 3] = np.where(shown, round(255 * ALPHA), 0).astype(np.uint8)
    return _Heat(overlay=overlay, tissue_cover=tissue_cover, tumour_cover=tumour_cover, vmax=vmax,
                 auto_vmax=auto_vmax, clipped=clipped)


def _colour_bar(fig: Figure, cax, heat: _Heat, measure: str) -> None:
    """The horizontal colour bar from 0 (confident) to vmax (unsure), labelled with `measure`."""
    norm = Normalize(0.0, heat.vmax, clip=True)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=cax, orientation="horizontal",
                        extend="max" if heat.clipped else "neither")
    vmax = heat.vmax
    cbar.set_ticks([0.0, vmax / 2, vmax], labels=["0\nconfident", f"{vmax / 2:.3g}", f"{vmax:.3g}\nunsure"])
    cbar.ax.tick_params(labelsize=9)
    cbar.set_label(measure, fontsize=10)


def summary_numbers(uncertainty: np.ndarray, map_mpp: float, tissue_on_map_grid: np.ndarray,
                    prediction: np.ndarray | None, threshold: float | None = None) -> dict[str, float]:
    """Numbers for the side panel, all on the map grid (masks a pixel off in size are cropped or
    padded with False): mean_uncertainty and p90_uncertainty on tissue (NaN pixels skipped; NaN
    without tissue), tissue_mm2, tumour_mm2 (the whole predicted mask), tumour_share_of_tissue
    (predicted tumour on tissue / tissue, 0..1); the last two are NaN without a prediction, the
    share also without tissue. With `threshold` (e.g. a cohort's 90th percentile), also
    share_above_threshold: the share of tissue whose uncertainty exceeds it."""
    uncertainty = np.asarray(uncertainty)
    if uncertainty.ndim != 2:
        raise ValueError(f"uncertainty must be 2-D, got shape {uncertainty.shape}")
    if not map_mpp > 0:
        raise ValueError(f"map_mpp must be positive, got {map_mpp}")
    tissue = _fit_mask(tissue_on_map_grid, uncertainty.shape)
    values = uncertainty[tissue]
    values = values[np.isfinite(values)]
    pixel_mm2 = (map_mpp / 1000.0) ** 2
    tissue_px = int(np.count_nonzero(tissue))
    numbers = {
        "mean_uncertainty": float(values.mean(dtype=np.float64)) if values.size else math.nan,
        "p90_uncertainty": float(np.percentile(values, 90)) if values.size else math.nan,
        "tissue_mm2": tissue_px * pixel_mm2,
        "tumour_mm2": math.nan,
        "tumour_share_of_tissue": math.nan,
    }
    if prediction is not None:
        tumour = _fit_mask(prediction, uncertainty.shape)
        numbers["tumour_mm2"] = int(np.count_nonzero(tumour)) * pixel_mm2
        if tissue_px:
            numbers["tumour_share_of_tissue"] = int(np.count_nonzero(tumour & tissue)) / tissue_px
    if threshold is not None:
        above = int(np.count_nonzero(values > threshold))
        numbers["share_above_threshold"] = above / tissue_px if tissue_px else math.nan
    return numbers


def resample_to_grid(array: np.ndarray, src_mpp: float, dst_mpp: float, shape: tuple[int, int]) -> np.ndarray:
    """Float32 `shape` (h, w) resampling of a 2-D grid at `src_mpp` onto one at `dst_mpp` with the
    same origin: area average when shrinking, bilinear when enlarging (a bool mask gives its
    coverage 0..1). Non-finite source pixels are left out of the averages; output pixels with no
    finite source are NaN. Missing source rows/columns at the far edges repeat the last ones.
    Works in strips, so only the output and one strip are held."""
    array = np.asarray(array)
    h, w = shape
    src_h, src_w = array.shape
    scale = dst_mpp / src_mpp  # source pixels per output pixel
    method = Image.Resampling.BOX if scale >= 1 else Image.Resampling.BILINEAR
    margin = int(math.ceil(scale)) + 2  # rows beyond the strip that the filter may reach
    cols = np.minimum(np.arange(int(math.ceil(w * scale)) + margin), src_w - 1)
    rows_per_strip = max(1, int(_STRIP_ELEMENTS / (len(cols) * max(scale, 1.0))))
    floating = np.issubdtype(array.dtype, np.floating)
    out = np.empty((h, w), np.float32)
    for oy in range(0, h, rows_per_strip):
        oh = min(rows_per_strip, h - oy)
        y0, y1 = oy * scale, (oy + oh) * scale
        r0 = max(int(math.floor(y0)) - margin, 0)
        rows = np.minimum(np.arange(r0, int(math.ceil(y1)) + margin), src_h - 1)
        strip = array[np.ix_(rows, cols)].astype(np.float32, copy=False)
        box = (0.0, y0 - r0, w * scale, y1 - r0)
        valid = np.isfinite(strip) if floating else None
        if valid is None or valid.all():
            out[oy : oy + oh] = _resize(strip, (w, oh), box, method)
        else:
            total = _resize(np.where(valid, strip, 0.0).astype(np.float32), (w, oh), box, method)
            weight = _resize(valid.astype(np.float32), (w, oh), box, method)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[oy : oy + oh] = np.where(weight > 1e-3, total / weight, np.nan)
    return out


def _resize(strip: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float], method) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(strip, np.float32))
    return np.asarray(image.resize(size, method, box=box), np.float32)


def _fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask as bool `shape`: cropped, or padded with False, at the bottom/right."""
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask >= 0.5
    if mask.shape == shape:
        return mask
    out = np.zeros(shape, bool)
    h, w = min(shape[0], mask.shape[0]), min(shape[1], mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out

