"""Whole-slide images through OpenSlide, addressed by level-0 (x, y) boxes and a resolution in µm/px.

Callers never pick a pyramid level: they ask for an `mpp` and `Slide` reads the best level and
resamples. Every OpenSlide failure becomes a one-line `SlideError` naming the file (OpenSlide
errors are sticky: after one, the handle answers every call with the same error).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import openslide
from PIL import Image

from ugafl.common.errors import SlideError
from ugafl.common.log import get_logger
from ugafl.common.slide_files import openslide_path

log = get_logger("slide")

MPP_RANGE = (0.1, 20.0)  # plausible level-0 µm/px for a slide scan
_ANISOTROPY_WARN = 0.05  # relative x/y mpp difference above which a warning is logged
_LEVEL_MATCH = 0.01  # a level within 1% of the requested mpp is read without resampling
_THUMB_CHUNK = 4096  # thumbnail reads at most this many level pixels per side at once


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: size in its own pixels, downsample from level 0, resolution in µm/px."""

    index: int
    width: int
    height: int
    downsample: float
    mpp: float


class Slide:
    """An open whole-slide image (anything OpenSlide opens). Use as a context manager.

    `mpp` is the level-0 resolution in µm/px; `levels[i].mpp` = `mpp * levels[i].downsample`.
    Thread-safe for concurrent reads (libopenslide is); do not close while reading.
    """

    def __init__(self, path: Path, handle: openslide.OpenSlide, vendor: str, mpp: float) -> None:
        self.path = path
        self.vendor = vendor
        self.mpp = mpp
        self._osr: openslide.OpenSlide | None = handle
        # Cached now: after an OpenSlide error even the properties become unreadable.
        self.levels = [
            LevelInfo(i, int(w), int(h), float(ds), mpp * float(ds))
            for i, ((w, h), ds) in enumerate(zip(handle.level_dimensions, handle.level_downsamples))
        ]

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.levels[0].width, self.levels[0].height

    def best_level_for(self, mpp: float) -> LevelInfo:
        """The coarsest level whose mpp <= `mpp` * 1.01 (level 0 if none is that fine)."""
        _check_mpp_arg(mpp)
        best = self.levels[0]
        for level in self.levels:
            if level.mpp <= mpp * (1 + _LEVEL_MATCH) and level.downsample >= best.downsample:
                best = level
        return best

    def read_region(self, location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        """RGB uint8 (H, W, 3) of the level-0 box at `location` (x, y) with level-0 `size` (w, h),
        resampled to `mpp` µm/px: W = round(w * self.mpp / mpp) (at least 1), H likewise.

        Reads from `best_level_for(mpp)`; when that level is the requested resolution and the box
        falls on its pixel grid, nothing is resampled. Pixels outside the slide come back white.
        """
        level = self.best_level_for(mpp)
        x, y = location
        w, h = size
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        out_w = max(1, round(w * self.mpp / mpp))
        out_h = max(1, round(h * self.mpp / mpp))
        return self._read_box(float(x), float(y), float(w), float(h), out_w, out_h, level)

    def thumbnail(self, mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at about `mpp` µm/px: (RGB uint8 (H, W, 3), actual mpp along x).

        W = round(width0 * self.mpp / mpp) (at least 1). Read in chunks so memory stays bounded
        even when the nearest finer level is far finer than `mpp`.
        """
        level = self.best_level_for(mpp)
        w0, h0 = self.dimensions
        out_w = max(1, round(w0 * self.mpp / mpp))
        out_h = max(1, round(h0 * self.mpp / mpp))
        sx, sy = out_w / w0, out_h / h0  # output pixels per level-0 pixel
        # Output chunk side such that one chunk reads at most _THUMB_CHUNK level pixels a side.
        chunk = max(16, int(_THUMB_CHUNK * min(sx, sy) * level.downsample))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for oy in range(0, out_h, chunk):
            oh = min(chunk, out_h - oy)
            for ox in range(0, out_w, chunk):
                ow = min(chunk, out_w - ox)
                out[oy : oy + oh, ox : ox + ow] = self._read_box(ox / sx, oy / sy, ow / sx, oh / sy, ow, oh, level)
        return out, self.mpp * w0 / out_w

    def read_level(self, level: int, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Raw RGBA uint8 (h, w, 4) straight from OpenSlide: `location` level-0 (x, y), `size` in
        pixels of `level`. For checks and tests; everything else should use `read_region`."""
        osr = self._handle()
        try:
            region = osr.read_region(location, level, size)
        except openslide.OpenSlideError as error:
            raise SlideError(f"{self.path}: cannot be read: {error}") from error
        return np.asarray(region)

    def close(self) -> None:
        """Release the OpenSlide handle (idempotent)."""
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, vendor={self.vendor!r}, {w}x{h} px, mpp={self.mpp:.4g})"

    def _handle(self) -> openslide.OpenSlide:
        if self._osr is None:
            raise ValueError(f"{self.path}: slide is closed")
        return self._osr

    def _read_box(
        self, x0: float, y0: float, w0: float, h0: float, out_w: int, out_h: int, level: LevelInfo
    ) -> np.ndarray:
        """The level-0 box (x0, y0, w0, h0) (floats) read at `level`, as RGB (out_h, out_w, 3)."""
        ds = level.downsample
        # The box in level pixels, and the whole level pixels that cover it.
        lx0, ly0, lx1, ly1 = x0 / ds, y0 / ds, (x0 + w0) / ds, (y0 + h0) / ds
        ix0, iy0 = math.floor(lx0), math.floor(ly0)
        iw, ih = max(1, math.ceil(lx1) - ix0), max(1, math.ceil(ly1) - iy0)
        rgba = self.read_level(level.index, (round(ix0 * ds), round(iy0 * ds)), (iw, ih))
        rgb = _flatten_alpha(rgba)
        box = (lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0)
        if (iw, ih) == (out_w, out_h) and box == (0.0, 0.0, float(iw), float(ih)):
            return rgb
        shrinking = (lx1 - lx0) > out_w or (ly1 - ly0) > out_h
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        # np.array, not np.asarray: an array over Pillow's bytes is read-only, and callers (torch) write
        return np.array(Image.fromarray(rgb).resize((out_w, out_h), resample, box=box))


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide with OpenSlide. `mpp` (µm/px) overrides the file's level-0 resolution.

    `path` is a slide file (any one file of a DICOM series opens the whole series) or a folder that
    holds one slide's files (common.slide_files); `Slide.path` is `path` as given.
    Raises SlideError, one line naming the file, when the file is missing, not a slide format,
    cannot be opened, records no resolution, or its (or the override's) resolution is outside
    MPP_RANGE.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise SlideError(f"{path}: cannot be opened: permission denied")
    file = openslide_path(path)  # a slide's folder: the file OpenSlide opens (SlideError if none or several)
    if openslide.OpenSlide.detect_format(str(file)) is None:
        raise SlideError(f"{file}: not a slide format OpenSlide can read")
    try:
        handle = openslide.OpenSlide(str(file))
    except openslide.OpenSlideUnsupportedFormatError as error:
        raise SlideError(f"{file}: not a slide format OpenSlide can read") from error
    except openslide.OpenSlideError as error:
        raise SlideError(f"{file}: cannot be opened: {error}") from error
    try:
        props = dict(handle.properties)
        vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"
        level0_mpp = _check_mpp(path, mpp, override=True) if mpp is not None else _file_mpp(path, props)
        slide = Slide(path, handle, vendor, level0_mpp)
    except BaseException:
        handle.close()
        raise
    log.debug("opened %r", slide)
    return slide


def check_readable(slide: Slide) -> None:
    """Read one small tile at the centre of every level, so a slide that breaks mid-read is caught
    now with SlideError rather than halfway through a job."""
    for level in slide.levels:
        w, h = min(64, level.width), min(64, level.height)
        lx, ly = (level.width - w) // 2, (level.height - h) // 2
        slide.read_level(level.index, (round(lx * level.downsample), round(ly * level.downsample)), (w, h))


def _file_mpp(path: Path, props: dict[str, str]) -> float:
    """Level-0 µm/px recorded in the file: the mean of x and y, checked against MPP_RANGE."""
    try:
        mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
        mpp_y = float(props[openslide.PROPERTY_NAME_MPP_Y])
    except (KeyError, ValueError):
        raise SlideError(f"{path}: the file records no resolution (mpp); pass --mpp VALUE to set it") from None
    for value in (mpp_x, mpp_y):
        _check_mpp(path, value, override=False)
    if abs(mpp_x - mpp_y) > _ANISOTROPY_WARN * min(mpp_x, mpp_y):
        log.warning("%s: x and y resolution differ (%.4g vs %.4g µm/px); using their mean", path, mpp_x, mpp_y)
    return (mpp_x + mpp_y) / 2


def _check_mpp(path: Path, mpp: float, *, override: bool) -> float:
    """`mpp` if it lies in MPP_RANGE, else SlideError saying where the bad value came from."""
    low, high = MPP_RANGE
    if math.isfinite(mpp) and low <= mpp <= high:
        return float(mpp)
    plausible = f"the plausible range {low:g}-{high:g} µm/px"
    if override:
        raise SlideError(f"{path}: the given resolution {mpp:g} µm/px (--mpp) is outside {plausible}")
    raise SlideError(
        f"{path}: level-0 resolution {mpp:.4g} µm/px is outside {plausible} "
        "(the file's resolution tags are probably wrong); pass --mpp VALUE to override"
    )


def _check_mpp_arg(mpp: float) -> None:
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp!r}")


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """RGBA (non-premultiplied, as openslide-python returns it) over white, as RGB uint8."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
