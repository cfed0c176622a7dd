"""Uncertainty heat maps a pathologist reads at a glance: one PNG per slide with the per-pixel
uncertainty laid over the tissue of the thumbnail (nothing is drawn on glass), the tissue and the
model's tumour outlined, a colour bar, a 1 mm scale bar, the slide as scanned beside it for
comparison and a few summary numbers.

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
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib import patheffects
from PIL import Image
from skimage.measure import find_contours

from ugafl.common.atomic import atomic_write

CMAP = "inferno"  # perceptually uniform; dark = confident, bright = unsure
ALPHA = 0.65  # opacity of the heat map over tissue (off tissue: 0)
TISSUE_COLOUR = "#3a3a3a"
TUMOUR_COLOUR = "#00e5ff"  # cyan: apart from every colour of inferno
VMAX_PERCENTILE = 99.0  # default top of the colour scale: this percentile on tissue
DPI = 140
FIG_WIDTH_IN = 12.5  # 1750 px at DPI
_STRIP_ELEMENTS = 1 << 22  # source pixels resampled at once (16 MiB as float32)


@dataclass(frozen=True)
class PanelGeometry:
    """Where an image panel landed in the rendered figure. Thumbnail point (x, y), in thumbnail
    pixels with pixel (i, j) covering [j, j+1) x [i, i+1), lands at figure pixel
    (row, col) = (top + y * scale_y, left + x * scale_x)."""

    left: float
    top: float
    scale_x: float
    scale_y: float
    width: int  # thumbnail size, pixels
    height: int

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the rendered figure's pixel showing thumbnail point (x, y)."""
        return int(math.floor(self.top + y * self.scale_y)), int(math.floor(self.left + x * self.scale_x))

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) figure pixels of the whole thumbnail (bottom/right exclusive)."""
        return (
            int(round(self.top)),
            int(round(self.left)),
            int(round(self.top + self.height * self.scale_y)),
            int(round(self.left + self.width * self.scale_x)),
        )


@dataclass(frozen=True, eq=False)
class HeatmapRender:
    image: np.ndarray  # uint8 RGB (H, W, 3): the whole figure, exactly as written to the PNG
    panels: dict[str, PanelGeometry]  # "overlay" and, when shown, "slide"
    vmax: float  # top of the colour scale used


def slide_heatmap(
    out: Path,
    thumbnail: np.ndarray,
    thumb_mpp: float,
    uncertainty: np.ndarray,
    map_mpp: float,
    tissue: np.ndarray,
    tissue_mpp: float,
    prediction: np.ndarray | None,
    measure: str,
    title: str,
    summary: dict[str, str] | None = None,
    vmax: float | None = None,
    *,
    show_slide: bool = True,
) -> Path:
    """Write the heat map PNG of one slide to `out` (atomically) and return `out`.

    `thumbnail`: uint8 RGB (h, w, 3) at `thumb_mpp`; `uncertainty`: float (H, W) at `map_mpp`
    (NaN = not computed, drawn as nothing); `tissue`: bool at `tissue_mpp`; `prediction`: bool
    predicted tumour at `map_mpp` or None; `measure` labels the colour bar; `summary`: key ->
    formatted value lines for the side panel. The colour scale runs from 0 to `vmax` (default: the
    99th percentile of the uncertainty on tissue as drawn, so a few hot pixels don't wash out
    the map); pass one `vmax` to several slides to compare them. `show_slide=False` leaves out the
    panel with the slide as scanned."""
    render = render_heatmap(thumbnail, thumb_mpp, uncertainty, map_mpp, tissue, tissue_mpp, prediction,
                            measure, title, summary, vmax, show_slide=show_slide)
    return atomic_write(out, lambda tmp: Image.fromarray(render.image).save(tmp, format="PNG", dpi=(DPI, DPI)))


def render_heatmap(
    thumbnail: np.ndarray,
    thumb_mpp: float,
    uncertainty: np.ndarray,
    map_mpp: float,
    tissue: np.ndarray,
    tissue_mpp: float,
    prediction: np.ndarray | None,
    measure: str,
    title: str,
    summary: dict[str, str] | None = None,
    vmax: float | None = None,
    *,
    show_slide: bool = True,
) -> HeatmapRender:
    """The figure `slide_heatmap` writes, as an RGB array with where its image panels are."""
    thumbnail = np.asarray(thumbnail)
    if thumbnail.ndim != 3 or thumbnail.shape[2] not in (3, 4) or thumbnail.dtype != np.uint8 or 0 in thumbnail.shape:
        raise ValueError(f"thumbnail must be uint8 RGB (h, w, 3), got {thumbnail.dtype} {thumbnail.shape}")
    thumbnail = thumbnail[..., :3]
    for name, array in (("uncertainty", uncertainty), ("tissue", tissue), ("prediction", prediction)):
        if array is not None and (np.ndim(array) != 2 or 0 in np.shape(array)):
            raise ValueError(f"{name} must be a non-empty 2-D array, got shape {np.shape(array)}")
    for name, mpp in (("thumb_mpp", thumb_mpp), ("map_mpp", map_mpp), ("tissue_mpp", tissue_mpp)):
        if not mpp > 0:
            raise ValueError(f"{name} must be positive, got {mpp}")
    if vmax is not None and not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")

    shape = thumbnail.shape[:2]
    fig, layout = _figure(shape, show_slide, prediction is not None, summary)
    # Draw on a display grid: the thumbnail shrunk by a whole factor to no fewer pixels than the
    # panel has (matplotlib holds several float copies of each image it draws).
    factor = max(1, int(shape[1] // layout["panel_px"]))
    display = np.asarray(Image.fromarray(thumbnail).reduce(factor)) if factor > 1 else thumbnail
    grid, grid_mpp = display.shape[:2], thumb_mpp * factor
    values = resample_to_grid(uncertainty, map_mpp, grid_mpp, grid)
    tissue_cover = resample_to_grid(tissue, tissue_mpp, grid_mpp, grid)
    shown = (np.nan_to_num(tissue_cover) >= 0.5) & np.isfinite(values)
    tumour_cover = None if prediction is None else resample_to_grid(prediction, map_mpp, grid_mpp, grid)

    auto_vmax = vmax is None
    if auto_vmax:
        vmax = float(np.percentile(values[shown], VMAX_PERCENTILE)) if shown.any() else 0.0
        if not vmax > 0:
            finite_max = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
            vmax = finite_max if finite_max > 0 else 1.0
    clipped = bool(shown.any() and np.max(values[shown]) > vmax)

    norm = Normalize(0.0, vmax, clip=True)
    scaled = np.divide(values, np.float32(vmax), out=np.zeros_like(values), where=shown)
    del values
    overlay = colormaps[CMAP](np.clip(scaled, 0.0, 1.0, out=scaled), bytes=True)  # uint8 RGBA: small
    del scaled
    overlay[..., 3] = np.where(shown, round(255 * ALPHA), 0).astype(np.uint8)
    del shown

    ax = layout["overlay"]
    extent = (0, grid[1] * factor, grid[0] * factor, 0)  # thumbnail pixel coordinates
    ax.imshow(display, extent=extent, interpolation="antialiased")
    ax.imshow(overlay, extent=extent, interpolation="antialiased")
    _outline(ax, tissue_cover, factor, TISSUE_COLOUR, 0.7)
    if tumour_cover is not None:
        _outline(ax, tumour_cover, factor, TUMOUR_COLOUR, 1.6)
    _scale_bar(ax, shape, thumb_mpp)
    ax.set_title("model uncertainty on tissue", fontsize=11, loc="left")

    if show_slide:
        ax_slide = layout["slide"]
        ax_slide.imshow(display, extent=extent, interpolation="antialiased")
        _scale_bar(ax_slide, shape, thumb_mpp)
        ax_slide.set_title("slide as scanned", fontsize=11, loc="left")

    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=layout["cbar"], orientation="horizontal",
                        extend="max" if clipped else "neither")
    cbar.set_ticks([0.0, vmax / 2, vmax], labels=["0\nconfident", f"{vmax / 2:.3g}", f"{vmax:.3g}\nunsure"])
    cbar.ax.tick_params(labelsize=9)
    cbar.set_label(measure, fontsize=10)

    fig.text(layout["margin"], 1 - layout["title_y"], title, fontsize=14, fontweight="bold", va="center", ha="left")
    scale_note = "99th percentile on tissue" if auto_vmax else "fixed, shared across slides"
    _info_panel(layout["info"], layout["info_h"], prediction is not None, summary, f"0 – {vmax:.3g}", scale_note)

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    panels = {name: _geometry(layout[name], shape, image.shape[0]) for name in ("overlay", "slide") if name in layout}
    fig.clear()
    return HeatmapRender(image=image, panels=panels, vmax=float(vmax))


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


def _outline(ax, cover: np.ndarray, factor: int, colour: str, width: float) -> None:
    """The 0.5 iso-line of a coverage map on the display grid (`factor` thumbnail pixels per
    pixel), in thumbnail coordinates."""
    if min(cover.shape) < 2:  # a contour needs at least a 2x2 grid (a tiny slide's thumbnail can be 1x1)
        return
    segments = [(c[:, ::-1] + 0.5) * factor for c in find_contours(np.nan_to_num(cover), 0.5)]
    if segments:
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=width, capstyle="round",
                                         joinstyle="round"))


def _scale_bar(ax, shape: tuple[int, int], thumb_mpp: float) -> None:
    """1 mm at the bottom left; when 1 mm is over a third or under a 15th of the width, the
    longest of 0.1, 0.2, 0.5, 2, 5, 10 mm that takes at most a quarter of it."""
    h, w = shape
    length_mm = 1.0
    if not w / 15 <= 1000.0 / thumb_mpp <= w / 3:
        fitting = [mm for mm in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0) if mm * 1000.0 / thumb_mpp <= w / 4]
        length_mm = fitting[-1] if fitting else 0.1
    bar = length_mm * 1000.0 / thumb_mpp
    x0, y = 0.04 * w, h - 0.05 * h
    halo = [patheffects.withStroke(linewidth=5, foreground="white")]
    ax.plot([x0, x0 + bar], [y, y], color="black", linewidth=3, solid_capstyle="butt", path_effects=halo)
    label = f"{length_mm:g} mm" if length_mm >= 1 else f"{length_mm * 1000:g} µm"
    ax.text(x0 + bar / 2, y - 0.015 * h, label, ha="center", va="bottom", fontsize=9,
            path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])


def _figure(shape: tuple[int, int], show_slide: bool, has_prediction: bool,
            summary: dict[str, str] | None) -> tuple[Figure, dict]:
    """An empty figure with its axes placed in inches. Wide slides stack the two image panels;
    others put them side by side. The info column (legend, numbers) is always on the right."""
    h, w = shape
    aspect = w / h
    margin, gap, info_w = 0.3, 0.3, 3.0
    title_h, panel_title_h, cbar_block = 0.6, 0.3, 0.95
    stacked = show_slide and aspect >= 1.5
    columns = 2 if show_slide and not stacked else 1
    panel_w = (FIG_WIDTH_IN - 2 * margin - info_w - columns * gap) / columns
    max_panel_h = 4.6 if stacked else 7.0
    panel_h = panel_w / aspect
    if panel_h > max_panel_h:
        panel_h, panel_w = max_panel_h, max_panel_h * aspect
    fig_w = 2 * margin + columns * (panel_w + gap) + info_w
    images_h = panel_title_h + panel_h + cbar_block + (panel_title_h + panel_h if stacked else 0)
    info_h = _info_height(has_prediction, summary)
    fig_h = title_h + max(images_h, info_h) + margin

    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI, facecolor="white")

    def add(x_in: float, top_in: float, width_in: float, height_in: float):
        return fig.add_axes((x_in / fig_w, 1 - (top_in + height_in) / fig_h, width_in / fig_w, height_in / fig_h))

    layout: dict = {"margin": margin / fig_w, "title_y": title_h / 2 / fig_h, "panel_px": panel_w * DPI}
    top = title_h + panel_title_h
    layout["overlay"] = add(margin, top, panel_w, panel_h)
    cbar_w = min(panel_w * 0.7, 4.5)
    layout["cbar"] = add(margin + (panel_w - cbar_w) / 2, top + panel_h + 0.12, cbar_w, 0.16)
    if show_slide:
        if stacked:
            layout["slide"] = add(margin, top + panel_h + cbar_block + panel_title_h, panel_w, panel_h)
        else:
            layout["slide"] = add(margin + panel_w + gap, top, panel_w, panel_h)
    info_x = margin + columns * (panel_w + gap)
    layout["info"] = add(info_x, title_h, info_w, fig_h - title_h - margin)
    layout["info_h"] = fig_h - title_h - margin
    for name in ("overlay", "slide"):
        if name in layout:
            ax = layout[name]
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_axis_off()
    layout["info"].set_axis_off()
    return fig, layout


_LINE_IN = 0.22  # one line of 10 pt text, inches
_WRAP = 34  # characters per line in the info column


def _info_height(has_prediction: bool, summary: dict[str, str] | None) -> float:
    lines = 1.5 + (2 if has_prediction else 1) * 1.3 + 1.0  # header, legend, gap
    for key, value in list((summary or {}).items()) + [("colour scale", "x"), ("", "x")]:
        lines += len(textwrap.wrap(str(key), _WRAP) or [""]) + 1.3 * len(textwrap.wrap(str(value), _WRAP) or [""]) + 0.6
    return lines * _LINE_IN


def _info_panel(ax, height_in: float, has_prediction: bool, summary: dict[str, str] | None,
                scale: str, scale_note: str) -> None:
    """Legend, then one 'key (grey) / value (bold)' card per summary entry, top down."""
    y = 0.0  # inches below the top of the column

    def put(text: str, lines: float, **style) -> None:
        nonlocal y
        ax.text(0.0, 1 - y / height_in, text, transform=ax.transAxes, ha="left", va="top", **style)
        y += lines * _LINE_IN

    handles = [Line2D([], [], color=TISSUE_COLOUR, linewidth=1.0, label="tissue outline")]
    if has_prediction:
        handles.append(Line2D([], [], color=TUMOUR_COLOUR, linewidth=2.5, label="model's tumour"))
    put("Legend", 1.4, fontsize=11, fontweight="bold")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1 - y / height_in), frameon=False,
              fontsize=10, borderaxespad=0.0, handlelength=2.2)
    y += len(handles) * 1.3 * _LINE_IN + 0.8 * _LINE_IN
    put("Summary", 1.4, fontsize=11, fontweight="bold")
    entries = list((summary or {}).items()) + [("colour scale", f"{scale}\n({scale_note})")]
    for key, value in entries:
        key_lines = textwrap.wrap(str(key), _WRAP) or [""]
        put("\n".join(key_lines), len(key_lines), fontsize=9.5, color="#555555")
        value_lines = [line for part in str(value).split("\n") for line in (textwrap.wrap(part, _WRAP) or [""])]
        first, rest = value_lines[0], value_lines[1:]
        put(first, 1.3, fontsize=12.5, fontweight="bold")
        if rest:
            put("\n".join(rest), len(rest), fontsize=9.5, color="#555555")
        y += 0.6 * _LINE_IN


def _geometry(ax, shape: tuple[int, int], image_h: int) -> PanelGeometry:
    """Thumbnail coordinates -> rendered-image (row, col), from the axes' data transform."""
    (x0, y0), (x1, y1) = ax.transData.transform([(0.0, 0.0), (float(shape[1]), float(shape[0]))])
    return PanelGeometry(left=float(x0), top=float(image_h - y0), scale_x=float((x1 - x0) / shape[1]),
                         scale_y=float((y0 - y1) / shape[0]), width=int(shape[1]), height=int(shape[0]))
