"""A close look at the overlays of `ugafl uncertainty` on one slide, to see whether patch borders
show: a window of 4 x 4 scored patches around the grid corner with the most predicted tumour,
drawn three times (the slide, the uncertainty overlay, the predicted tumour), with the patch grid
marked by ticks on the frame only (nothing drawn over the maps).

    python benchmarks/wsi_crop.py SLIDE OUT_DIR/<slide stem> --patch-um 1024 --png crop.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from matplotlib import colormaps
from matplotlib.figure import Figure

from ugafl.common.slide import open_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slide", type=Path)
    parser.add_argument("outputs", type=Path, help="the slide's folder of `ugafl uncertainty` outputs")
    parser.add_argument("--patch-um", type=float, default=1024.0)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    mask = tifffile.imread(args.outputs / "tumour_overlay.tif", level=0)
    unc = tifffile.imread(args.outputs / "uncertainty_overlay.tif", level=0)
    with tifffile.TiffFile(args.outputs / "uncertainty_overlay.tif") as tif:
        info = json.loads(tif.pages[0].description)
    mpp = info["slide_mpp"] * info["downsample"]  # overlay µm/px
    step = args.patch_um / mpp  # overlay px per patch
    # The grid corner (a multiple of the patch) with the most tumour in the 2 x 2 patches around it.
    best, corner = -1, (0, 0)
    for gy in range(1, int(mask.shape[0] // step)):
        for gx in range(1, int(mask.shape[1] // step)):
            y, x = round(gy * step), round(gx * step)
            window = mask[y - round(step) : y + round(step), x - round(step) : x + round(step)]
            score = window.mean() * (window.mean() < 0.9) + (unc[y - round(step) : y + round(step), x - round(step) : x + round(step)] > 0).mean()
            if score > best:
                best, corner = score, (y, x)
    y, x = corner
    half = round(2 * step)
    box = (slice(max(0, y - half), y + half), slice(max(0, x - half), x + half))
    with open_slide(args.slide) as slide:
        scale = mpp / slide.mpp
        y0, x0 = box[0].start, box[1].start
        h, w = unc[box].shape
        rgb = slide.read_region((round(x0 * scale), round(y0 * scale)), (round(w * scale), round(h * scale)), mpp)[:h, :w]
    u = unc[box].astype(np.float32) / 255 * info["scale"]
    fig = Figure(figsize=(15, 5.4), dpi=110)
    panels = [("slide", rgb), (f"uncertainty ({info['measure']}, nats)", None), ("predicted tumour", None)]
    for i, (title, image) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(rgb)
        if i == 1:
            shown = np.ma.masked_where(unc[box] == 0, u)
            ax.imshow(shown, cmap=colormaps["inferno"], vmin=0, vmax=float(np.percentile(u[unc[box] > 0], 99)) if (unc[box] > 0).any() else 1,
                      alpha=0.85)
        if i == 2:
            ax.imshow(np.ma.masked_where(mask[box] == 0, mask[box]), cmap="autumn", alpha=0.5)
        ticks = [round(k * step) - x0 for k in range(int(x0 // step), int((x0 + w) // step) + 2) if 0 <= round(k * step) - x0 <= w]
        ax.set_xticks(ticks)
        ax.set_yticks([round(k * step) - y0 for k in range(int(y0 // step), int((y0 + h) // step) + 2) if 0 <= round(k * step) - y0 <= h])
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.tick_params(length=8, color="tab:blue")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{args.slide.name}: {w * mpp / 1000:.1f} x {h * mpp / 1000:.1f} mm at {mpp:.2f} µm/px; ticks: the "
                 f"{args.patch_um:g} µm patch grid (patch borders)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"{args.png}: window at overlay px ({x0}, {y0}), {w} x {h}")


if __name__ == "__main__":
    main()
