"""The heat map figure's furniture: where the panels, colour bar and info column sit (placed in
inches on a figure `FIG_WIDTH_IN` wide at `DPI`), the tissue/tumour outlines, the scale bar, the
legend and summary cards, and where a thumbnail panel landed in the rendered image. What is
drawn inside the panels is `ugafl.common.heatmap`'s business."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from matplotlib import patheffects
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from skimage.measure import find_contours

TISSUE_COLOUR = "#3a3a3a"
TUMOUR_COLOUR = "#00e5ff"  # cyan: apart from every colour of inferno
DPI = 140
FIG_WIDTH_IN = 12.5  # 1750 px at DPI


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


def draw_outline(ax, cover: np.ndarray, factor: int, colour: str, width: float) -> None:
    """The 0.5 iso-line of a coverage map on the display grid (`factor` thumbnail pixels per
    pixel), in thumbnail coordinates."""
    if min(cover.shape) < 2:  # a contour needs at least a 2x2 grid (a tiny slide's thumbnail can be 1x1)
        return
    segments = [(c[:, ::-1] + 0.5) * factor for c in find_contours(np.nan_to_num(cover), 0.5)]
    if segments:
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=width, capstyle="round",
                                         joinstyle="round"))


def draw_scale_bar(ax, shape: tuple[int, int], thumb_mpp: float) -> None:
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


def empty_figure(shape: tuple[int, int], show_slide: bool, has_prediction: bool,
            summary: Mapping[str, str] | None) -> tuple[Figure, dict]:
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


def _info_height(has_prediction: bool, summary: Mapping[str, str] | None) -> float:
    lines = 1.5 + (2 if has_prediction else 1) * 1.3 + 1.0  # header, legend, gap
    for key, value in list((summary or {}).items()) + [("colour scale", "x"), ("", "x")]:
        lines += len(textwrap.wrap(str(key), _WRAP) or [""]) + 1.3 * len(textwrap.wrap(str(value), _WRAP) or [""]) + 0.6
    return lines * _LINE_IN


def draw_info_panel(ax, height_in: float, has_prediction: bool, summary: Mapping[str, str] | None,
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


def panel_geometry(ax, shape: tuple[int, int], image_h: int) -> PanelGeometry:
    """Thumbnail coordinates -> rendered-image (row, col), from the axes' data transform."""
    (x0, y0), (x1, y1) = ax.transData.transform([(0.0, 0.0), (float(shape[1]), float(shape[0]))])
    return PanelGeometry(left=float(x0), top=float(image_h - y0), scale_x=float((x1 - x0) / shape[1]),
                         scale_y=float((y0 - y1) / shape[0]), width=int(shape[1]), height=int(shape[0]))
