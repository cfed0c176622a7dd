"""A regular grid of square patches at a chosen resolution, in level-0 coordinates, kept where
there is enough tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ugafl.common.log import get_logger
from ugafl.common.slide import Slide
from ugafl.common.tissue import TissueMask, detect_tissue

log = get_logger("tiling")


@dataclass(frozen=True)
class PatchLocation:
    """A patch as a level-0 box: top-left (x, y) and size (width, height) in level-0 pixels."""

    x: int
    y: int
    width: int
    height: int
    tissue_fraction: float


def patch_grid(
    slide: Slide,
    mpp: float,
    patch_size: int,
    stride: int | None = None,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.1,
) -> list[PatchLocation]:
    """Grid of `patch_size` x `patch_size` patches at `mpp` µm/px, row-major, in level-0 coordinates.

    `stride` is in pixels at `mpp` (default `patch_size`). Each patch is round(patch_size * mpp /
    slide.mpp) level-0 pixels wide; patch k along an axis starts at round(k * stride * mpp /
    slide.mpp), so rounding never accumulates. The grid covers the whole slide: the last row and
    column may extend past the edge (reading there gives white). Patches whose tissue fraction is
    below `min_tissue` are dropped (`min_tissue=0` keeps all); `tissue` defaults to
    `detect_tissue(slide)`.
    """
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp!r}")
    stride = patch_size if stride is None else stride
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size and stride must be >= 1, got {patch_size} and {stride}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue must be within 0..1, got {min_tissue}")
    scale = mpp / slide.mpp  # level-0 pixels per pixel at `mpp`
    size0 = max(1, round(patch_size * scale))
    stride0 = stride * scale
    width0, height0 = slide.dimensions
    xs = _starts(width0, size0, stride0)
    ys = _starts(height0, size0, stride0)
    grid_x, grid_y = np.meshgrid(xs, ys)  # row-major: y outer, x inner
    locations = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    if tissue is None:
        tissue = detect_tissue(slide)
    fractions = tissue.fractions_in(locations, np.full_like(locations, size0), slide.mpp)
    keep = fractions >= min_tissue
    patches = [
        PatchLocation(int(x), int(y), size0, size0, float(f))
        for (x, y), f in zip(locations[keep], fractions[keep])
    ]
    log.debug(
        "%s: %d of %d patches of %d px at %.4g µm/px have tissue >= %.2f",
        slide.path, len(patches), len(locations), patch_size, mpp, min_tissue,
    )
    return patches


def _starts(length0: int, size0: int, stride0: float) -> np.ndarray:
    """Level-0 starts round(k * stride0), as few as cover [0, length0) with patches of size0."""
    count = max(1, math.ceil((length0 - size0) / stride0) + 1)
    while round((count - 1) * stride0) + size0 < length0:
        count += 1
    return np.round(np.arange(count) * stride0).astype(np.int64)
