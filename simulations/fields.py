"""Smooth random fields: the low-frequency noise that shapes tissue, tumours and artefacts."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], correlation_px: float) -> np.ndarray:
    """Zero-mean, unit-sd float32 noise of `shape` (rows, cols) whose features are about
    `correlation_px` pixels across. Made on a coarse grid and upsampled, so cost is O(pixels)."""
    step = max(1.0, correlation_px / 3.0)
    coarse_shape = (int(np.ceil(shape[0] / step)) + 4, int(np.ceil(shape[1] / step)) + 4)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 1.0)
    # Bilinear upsampling (PIL's float mode is an order of magnitude faster than ndimage.zoom).
    big = (round(coarse_shape[1] * step), round(coarse_shape[0] * step))
    field = np.asarray(Image.fromarray(coarse, mode="F").resize(big, Image.Resampling.BILINEAR))
    field = field[2 * int(step) : 2 * int(step) + shape[0], 2 * int(step) : 2 * int(step) + shape[1]].copy()
    if field.shape != shape:  # rounding: pad by edge values
        field = np.pad(field, ((0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])), mode="edge")
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


def coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids (y, x) as float32, broadcastable."""
    y = np.arange(shape[0], dtype=np.float32)[:, None]
    x = np.arange(shape[1], dtype=np.float32)[None, :]
    return y, x


def ellipse_norm(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float], angle: float) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse with centre (x, y), semi-axes (a, b)
    in pixels, rotated by `angle` radians."""
    y, x = coordinates(shape)
    dx, dy = x - centre[0], y - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / axes[0]
    v = (-dx * s + dy * c) / axes[1]
    return np.sqrt(u * u + v * v)


def ellipse_box(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float], angle: float, pad: float = 1.2):
    """(slices, normalised radius) of an ellipse computed only inside its bounding box (padded by
    `pad` times the long semi-axis), for stamping small shapes onto a large canvas cheaply."""
    r = max(axes) * pad + 2
    y0, y1 = int(max(centre[1] - r, 0)), int(min(centre[1] + r, shape[0]))
    x0, x1 = int(max(centre[0] - r, 0)), int(min(centre[0] + r, shape[1]))
    box = (slice(y0, y1), slice(x0, x1))
    return box, ellipse_norm((y1 - y0, x1 - x0), (centre[0] - x0, centre[1] - y0), axes, angle)


def distance_inside(mask: np.ndarray, coarse: int = 4) -> np.ndarray:
    """Approximate distance in pixels from each pixel inside `mask` to its edge (0 outside),
    computed on a `coarse`-times smaller grid for speed."""
    small = mask[::coarse, ::coarse]
    dist = ndimage.distance_transform_edt(small).astype(np.float32) * coarse
    big = np.repeat(np.repeat(dist, coarse, axis=0), coarse, axis=1)[: mask.shape[0], : mask.shape[1]]
    return np.where(mask, big, 0.0).astype(np.float32)
