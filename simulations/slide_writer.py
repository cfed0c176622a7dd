"""Writes pyramidal tiled slides that OpenSlide opens, as generic TIFF or Aperio-style SVS; mpp
always in the resolution tags (pixels per centimetre). Masks are written by common.masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TILE = 256


def pyramid(level0: np.ndarray, min_levels: int = 3, min_size: int = 512) -> list[np.ndarray]:
    """Level 0 and its 2x reductions until the short side would drop below `min_size` (but at
    least `min_levels` levels)."""
    levels = [level0]
    while len(levels) < min_levels or min(levels[-1].shape[:2]) // 2 >= min_size:
        prev = levels[-1]
        h, w = prev.shape[:2]
        levels.append(np.asarray(Image.fromarray(prev).reduce(2)) if min(h, w) >= 2 else prev)
    return levels


from ugafl.common.atomic import atomic_write
from ugafl.common.masks import tiff_resolution as _resolution
from ugafl.simulations.extra import require_jpeg_writer


def write_slide(path: Path, level0: np.ndarray, mpp: float, file_format: str, jpeg_quality: int, magnification: float | None = None) -> int:
    """Writes `level0` (uint8 RGB, level-0 µm/px `mpp`) and its pyramid to `path` atomically.
    Returns the number of levels."""
    require_jpeg_writer()
    levels = pyramid(level0)
    h, w = level0.shape[:2]
    description = None
    if file_format == "svs":
        mag = magnification or round(10.0 / mpp)
        description = (
            f"Aperio Image Library v12.0.16 \n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q={jpeg_quality}"
            f"|AppMag = {mag:g}|MPP = {mpp:.4f}|ScanScope ID = UGAFL-SYNTH"
        )
    elif file_format != "tiff":
        raise ValueError(f"unknown slide format {file_format!r}")
    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=level0.nbytes > 2**31) as tif:
            for i, level in enumerate(levels):
                level_mpp = mpp * level0.shape[1] / level.shape[1]
                tif.write(
                    level, photometric="rgb", tile=(TILE, TILE), compression="jpeg", compressionargs={"level": jpeg_quality},
                    subfiletype=0 if i == 0 else 1, description=description if i == 0 else None, metadata=None,
                    **_resolution(level_mpp),
                )

    atomic_write(path, write)
    return len(levels)
