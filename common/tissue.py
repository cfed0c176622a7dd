"""Tissue detection on a low-resolution thumbnail, and tissue fractions of level-0 boxes.

The glass colour is estimated from the thumbnail (a high per-channel percentile) and the image is
divided by it, which white-balances tinted or greyish glass to neutral white. A pixel is then
tissue when it absorbs light (summed optical density above Otsu's threshold, kept within
[OD_FLOOR, OD_CAP]) or has colour (saturation above SATURATION_MIN). The floor keeps uneven
illumination of empty glass out; the cap keeps pale stroma in when Otsu would split dark tissue
from pale tissue; the colour test catches pale pink tissue that absorbs little. Specks smaller
than SPECK_UM² are dropped; enclosed holes smaller than that are filled, larger ones (fat,
vessels, tears: about 60 µm across and up) are kept.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_objects

from ugafl.common.log import get_logger
from ugafl.common.slide import Slide

log = get_logger("tissue")

BACKGROUND_PERCENTILE = 98.0  # per-channel percentile taken as the glass colour
OD_FLOOR = 0.3  # summed optical density (natural log, 3 channels) at or below which it is glass
OD_CAP = 0.6  # summed optical density above which it is always tissue
SATURATION_MIN = 0.1  # HSV saturation, after white balancing on the glass, above which it is tissue
SMOOTH_UM = 8.0  # radius of the opening/closing footprint, µm
SPECK_UM = 50.0  # objects smaller than SPECK_UM² are dropped, holes smaller than that are filled


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Boolean tissue mask on a grid of `mpp` µm/px anchored at the level-0 origin: mask pixel
    (i, j) covers the level-0 box starting at (j * mpp / slide_mpp, i * mpp / slide_mpp)."""

    mask: np.ndarray
    mpp: float

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != bool or 0 in self.mask.shape:
            raise ValueError(f"mask must be a non-empty 2-D bool array, got {self.mask.dtype} {self.mask.shape}")
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")

    @property
    def fraction(self) -> float:
        """Tissue fraction of the whole slide area (0..1)."""
        return float(self.mask.mean())

    def fraction_in(self, location: tuple[int, int], size: tuple[int, int], slide_mpp: float) -> float:
        """Tissue fraction (0..1) inside the level-0 box at `location` (x, y) of `size` (w, h);
        `slide_mpp` is the slide's level-0 µm/px. Parts of the box outside the slide count as
        non-tissue; partly covered mask pixels count by their covered area."""
        return float(self.fractions_in(np.array([location]), np.array([size]), slide_mpp)[0])

    def fractions_in(self, locations: np.ndarray, sizes: np.ndarray, slide_mpp: float) -> np.ndarray:
        """`fraction_in` for many boxes at once: `locations` and `sizes` are (N, 2) level-0
        (x, y) and (w, h); returns (N,) float64."""
        locations = np.asarray(locations, np.float64).reshape(-1, 2)
        sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
        if np.any(sizes <= 0):
            raise ValueError("box sizes must be positive")
        scale = slide_mpp / self.mpp  # mask pixels per level-0 pixel
        x0, y0 = locations[:, 0] * scale, locations[:, 1] * scale
        x1, y1 = x0 + sizes[:, 0] * scale, y0 + sizes[:, 1] * scale
        inside = self._integral_at(x1, y1) - self._integral_at(x0, y1) - self._integral_at(x1, y0)
        inside += self._integral_at(x0, y0)
        return np.clip(inside / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)

    @cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table, (H+1, W+1): [i, j] = tissue pixels in mask[:i, :j]. Integer counts,
        summed in place: a full-size slide's table is 4 bytes a mask pixel, with no float copies
        (float64 and two temporaries took about 400 MB at the real Camelyon size)."""
        dtype = np.int32 if self.mask.size < 2**31 else np.int64
        table = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype)
        inner = table[1:, 1:]
        np.cumsum(self.mask, axis=0, dtype=dtype, out=inner)
        np.cumsum(inner, axis=1, out=inner)
        return table

    def _integral_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue area in mask pixels over [0, x) x [0, y), for fractional mask coordinates: the
        bilinear interpolation of the summed-area table is exact for a piecewise-constant mask."""
        h, w = self.mask.shape
        x, y = np.clip(x, 0, w), np.clip(y, 0, h)
        j = np.minimum(np.floor(x).astype(np.int64), w - 1)
        i = np.minimum(np.floor(y).astype(np.int64), h - 1)
        fx, fy = x - j, y - i
        s = self._integral
        return (
            s[i, j] * (1 - fx) * (1 - fy)
            + s[i, j + 1] * fx * (1 - fy)
            + s[i + 1, j] * (1 - fx) * fy
            + s[i + 1, j + 1] * fx * fy
        )


def detect_tissue(slide: Slide, mpp: float = 8.0) -> TissueMask:
    """Tissue mask of the whole slide on a grid of about `mpp` µm/px (the thumbnail's actual mpp)."""
    rgb, actual_mpp = slide.thumbnail(mpp)
    mask = TissueMask(tissue_from_rgb(rgb, mpp=actual_mpp), actual_mpp)
    log.debug("%s: tissue %.1f%% on a %dx%d mask", slide.path, 100 * mask.fraction, rgb.shape[1], rgb.shape[0])
    return mask


STRIP_ROWS = 256  # thumbnail rows converted to floats at a time (memory: a strip, not the slide)


def tissue_from_rgb(rgb: np.ndarray, mpp: float = 8.0) -> np.ndarray:
    """Bool (H, W) tissue mask of an RGB uint8 (H, W, 3) image whose pixels are `mpp` µm wide
    (sets the size of the smoothing footprint, of the specks dropped and of the holes filled).
    Works through the image in strips of STRIP_ROWS: besides the image it holds one float32
    plane (the optical density) and two boolean planes."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    glass = _glass(rgb)
    density = np.empty(rgb.shape[:2], np.float32)
    coloured = np.empty(rgb.shape[:2], bool)
    for top in range(0, rgb.shape[0], STRIP_ROWS):
        rows = slice(top, top + STRIP_ROWS)
        transmitted = np.minimum((rgb[rows].astype(np.float32) + 1) / glass, 1.0)  # white-balanced: glass is (1, 1, 1)
        density[rows] = -np.log(transmitted).sum(axis=2)
        coloured[rows] = _saturation(transmitted) > SATURATION_MIN
    od_cut = min(max(OD_FLOOR, _otsu(density)), OD_CAP)
    return _clean((density > od_cut) | coloured, mpp)


def _glass(rgb: np.ndarray) -> np.ndarray:
    """The glass colour: the BACKGROUND_PERCENTILE-th percentile of each channel of rgb + 1
    (linear interpolation between order statistics, as numpy's default), from 256-bin histograms
    instead of a sorted float copy of the image."""
    n = rgb.shape[0] * rgb.shape[1]
    rank = BACKGROUND_PERCENTILE / 100.0 * (n - 1)
    low, frac = int(np.floor(rank)), rank - np.floor(rank)
    out = np.empty(3, np.float64)
    for c in range(3):
        cumulative = np.cumsum(np.bincount(rgb[..., c].ravel(), minlength=256))
        below = float(np.searchsorted(cumulative, low, side="right"))  # value of order statistic `low`
        above = float(np.searchsorted(cumulative, min(low + 1, n - 1), side="right"))
        out[c] = below + frac * (above - below) + 1.0
    return out.astype(np.float32)


def _saturation(pixels: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of positive float RGB (..., 3)."""
    high = pixels.max(axis=-1)
    return (high - pixels.min(axis=-1)) / high


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold, or -inf when the values are (nearly) constant and there is nothing to split."""
    if float(values.max() - values.min()) < 1e-6:
        return float("-inf")
    return float(threshold_otsu(values))


def _clean(mask: np.ndarray, mpp: float) -> np.ndarray:
    """Opening then closing with a disk of SMOOTH_UM (the image border neither erodes nor grows
    tissue), then drop objects and fill enclosed holes smaller than SPECK_UM²."""
    footprint = disk(max(1, round(SMOOTH_UM / mpp)))
    mask = ndimage.binary_erosion(mask, footprint, border_value=1)
    mask = ndimage.binary_dilation(mask, footprint, border_value=0)
    mask = ndimage.binary_dilation(mask, footprint, border_value=0)
    mask = ndimage.binary_erosion(mask, footprint, border_value=1)
    area = max(1, round((SPECK_UM / mpp) ** 2))
    mask = _remove_small_objects(mask, area)
    return _fill_small_holes(mask, area)


def _remove_small_objects(mask: np.ndarray, area: int) -> np.ndarray:
    """Drop 8-connected tissue objects of fewer than `area` pixels, across scikit-image's rename
    of the size argument (0.26: inclusive `max_size`; before: exclusive `min_size`)."""
    if "max_size" in inspect.signature(remove_small_objects).parameters:
        return remove_small_objects(mask, max_size=area - 1, connectivity=2)
    return remove_small_objects(mask, area, connectivity=2)


def _fill_small_holes(mask: np.ndarray, area: int) -> np.ndarray:
    """Fill background regions of fewer than `area` pixels that are enclosed by tissue. Unlike
    skimage's remove_small_holes, background touching the image border is never a hole (else a
    thumbnail smaller than `area` would turn into all tissue)."""
    labels, count = ndimage.label(~mask)
    if count == 0:
        return mask
    fill = np.bincount(labels.ravel()) < area
    fill[0] = False
    fill[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = False
    return mask | fill[labels]
