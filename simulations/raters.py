"""Simulated raters: pathologists who agree on the bulk of a metastasis and disagree at its
boundary (some outline generously, some tightly, all wander), and sometimes miss a tiny one."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ugafl.simulations.fields import smooth_field
from ugafl.simulations.tumour import ITC_MAX_UM, greatest_dimension_px


def signed_distance_um(mask: np.ndarray, um_per_px: float) -> np.ndarray:
    """Signed distance to the mask's edge in µm: positive inside, negative outside."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return ((inside - outside) * um_per_px).astype(np.float32)


def rater_masks(rng: np.random.Generator, truth: np.ndarray, n_raters: int, um_per_px: float, wander_um: float = 15.0) -> list[np.ndarray]:
    """`n_raters` bool masks of the same shape as `truth`. Each rater has a bias (µm, + is
    generous) and a boundary that wanders by about `wander_um`; each misses a region smaller than
    0.2 mm (greatest dimension) with probability 0.25."""
    if not truth.any():
        return [np.zeros_like(truth) for _ in range(n_raters)]
    ys, xs = np.nonzero(truth)
    pad = int(80 / um_per_px)
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, truth.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, truth.shape[1])
    sub = truth[y0:y1, x0:x1]
    sdf = signed_distance_um(sub, um_per_px)
    labels, n = ndimage.label(sub)
    small = [k for k in range(1, n + 1) if greatest_dimension_px(labels == k) * um_per_px <= ITC_MAX_UM]
    out = []
    for _ in range(n_raters):
        bias = rng.uniform(-8.0, 12.0)
        wander = wander_um * smooth_field(rng, sub.shape, 60.0 / um_per_px)
        rated = sdf + bias + wander > 0
        for label in small:
            if rng.random() < 0.25:
                rated &= ~ndimage.binary_dilation(labels == label, iterations=int(20 / um_per_px) + 1)
        full = np.zeros_like(truth)
        full[y0:y1, x0:x1] = rated
        out.append(full)
    return out
