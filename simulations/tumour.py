"""Metastases: where they are, how big (the clinical classes), and which growth pattern fills them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from skimage.measure import regionprops

from ugafl.common.log import get_logger
from ugafl.common.manifest import TumourRegion
from ugafl.simulations.centres import GROWTH_PATTERNS, CentreProfile
from ugafl.simulations.fields import ellipse_norm, smooth_field
from ugafl.simulations.node_layout import NodeLayout

log = get_logger("synth")

# Greatest dimension, µm, by clinical class (TNM: ITC <= 0.2 mm, micro <= 2 mm, macro > 2 mm),
# kept clear of the class boundaries so that a slide's class is never ambiguous.
SIZE_RANGES_UM = {"itc": (50.0, 170.0), "micro": (400.0, 1700.0), "macro": (2200.0, 2700.0)}
ITC_MAX_UM, MICRO_MAX_UM = 200.0, 2000.0


def size_class(greatest_dimension_um: float) -> str:
    """Clinical class of a metastasis by its greatest dimension in µm."""
    if greatest_dimension_um <= ITC_MAX_UM:
        return "itc"
    return "micro" if greatest_dimension_um <= MICRO_MAX_UM else "macro"


@dataclass
class Tumour:
    mask: np.ndarray  # bool: exact tumour region (what a careful pathologist outlines)
    pattern: np.ndarray  # int8: index into GROWTH_PATTERNS inside the mask, -1 outside
    regions: list[TumourRegion]


def _blob(rng: np.random.Generator, shape, centre, length_px: float) -> np.ndarray:
    a = length_px / 2
    b = a * rng.uniform(0.55, 0.95)
    # Work in the blob's bounding box only: cheap even on a large slide.
    pad = int(a * 1.3) + 4
    x0, y0 = int(max(centre[0] - pad, 0)), int(max(centre[1] - pad, 0))
    x1, y1 = int(min(centre[0] + pad, shape[1])), int(min(centre[1] + pad, shape[0]))
    sub = (y1 - y0, x1 - x0)
    norm = ellipse_norm(sub, (centre[0] - x0, centre[1] - y0), (a, b), rng.uniform(0, np.pi))
    wobble = 0.12 * smooth_field(rng, sub, max(a / 2.5, 4.0)) if min(sub) > 8 else 0.0
    out = np.zeros(shape, bool)
    out[y0:y1, x0:x1] = norm + wobble < 1.0
    return out


def _pick_place(rng: np.random.Generator, layout: NodeLayout, depth_range_um: tuple[float, float]):
    ok = layout.node[::8, ::8] & (layout.depth[::8, ::8] >= depth_range_um[0]) & (layout.depth[::8, ::8] <= depth_range_um[1])
    ys, xs = np.nonzero(ok)
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    return xs[i] * 8.0 + rng.uniform(0, 8), ys[i] * 8.0 + rng.uniform(0, 8)


def greatest_dimension_px(region: np.ndarray) -> float:
    """Maximum Feret diameter of a bool region in pixels, measured on pixel corners."""
    if not region.any():
        return 0.0
    ys, xs = np.nonzero(region & ~ndimage.binary_erosion(region))  # the hull lies on the boundary
    corners = np.concatenate([np.stack([ys + dy, xs + dx], 1) for dy in (0, 1) for dx in (0, 1)]).astype(float)
    if len(np.unique(corners[:, 0])) < 2 or len(np.unique(corners[:, 1])) < 2:
        return float(np.ptp(corners[:, 0]) + np.ptp(corners[:, 1]))
    hull = corners[ConvexHull(corners).vertices]
    return float(pdist(hull).max())


def _measure(mask: np.ndarray, pattern: np.ndarray, um_per_px: float) -> list[TumourRegion]:
    labels, _ = ndimage.label(mask)
    regions = []
    for prop in regionprops(labels):
        sl = prop.slice
        pat = pattern[sl][prop.image]
        pat_idx = int(np.bincount(pat[pat >= 0], minlength=len(GROWTH_PATTERNS)).argmax()) if (pat >= 0).any() else 0
        regions.append(TumourRegion(
            greatest_dimension_um=round(greatest_dimension_px(prop.image) * um_per_px, 1),
            area_um2=round(float(prop.area) * um_per_px**2, 1),
            pattern=GROWTH_PATTERNS[pat_idx],
        ))
    return sorted(regions, key=lambda r: -r.greatest_dimension_um)


def make_tumour(rng: np.random.Generator, layout: NodeLayout, label_type: str, centre: CentreProfile, um_per_px: float = 1.0) -> Tumour:
    """Tumour regions for a slide of `label_type`; the largest region's greatest dimension is in
    that class's range. Small metastases sit near the capsule, as they arrive via afferent lymph."""
    shape = layout.node.shape
    mask = np.zeros(shape, bool)
    pattern = np.full(shape, -1, np.int8)
    if label_type == "negative":
        return Tumour(mask, pattern, [])
    names = list(centre.patterns)
    probs = np.array([centre.patterns[n] for n in names], float)
    lo, hi = SIZE_RANGES_UM[label_type]
    n_regions = {"itc": int(rng.integers(1, 4)), "micro": int(rng.integers(1, 3)), "macro": 1}[label_type]
    for k in range(n_regions):
        # Extra regions are smaller than the first, so the slide's class stays the label type.
        target_lo, target_hi = (lo, hi) if k == 0 or label_type == "itc" else (SIZE_RANGES_UM["itc"][0], lo * 0.8)
        max_depth = float(layout.depth.max())
        for attempt in range(40):
            length = rng.uniform(target_lo, target_hi)
            # Small ones near the capsule; a macro as deep as the node allows (relaxed on retries).
            relax = 1.0 - attempt / 40
            depth = (30.0, 300.0) if label_type != "macro" else (0.5 * max_depth * relax, 1e9)
            place = _pick_place(rng, layout, depth) or _pick_place(rng, layout, (10.0, 1e9))
            # The region spans tears and holes inside the node, as a pathologist's outline does.
            blob = _blob(rng, shape, place, length / um_per_px) & (layout.node | layout.holes) & ~mask
            labels, n_parts = ndimage.label(blob)
            if n_parts > 1:  # keep the largest piece
                blob = labels == (np.bincount(labels.ravel())[1:].argmax() + 1)
            if blob.any() and target_lo <= greatest_dimension_px(blob) * um_per_px <= target_hi:
                log.debug("tumour region placed after %d attempts", attempt + 1)
                break
        else:
            continue
        mask |= blob
        pattern[blob] = _pattern_mix(rng, blob, names, probs / probs.sum(), length, um_per_px)
    regions = _measure(mask, pattern, um_per_px)
    return Tumour(mask, pattern, regions)


def _pattern_mix(rng: np.random.Generator, blob: np.ndarray, names: list[str], probs: np.ndarray, length_um: float, um_per_px: float) -> np.ndarray:
    """Growth pattern indices for the pixels of `blob`. Metastases are heterogeneous: a region
    larger than about 0.4 mm is split into zones whose areas follow the centre's pattern mix;
    a smaller one has a single pattern (ITCs are always small solid clusters)."""
    if length_um < 400:
        name = names[int(rng.choice(len(names), p=probs))] if length_um > SIZE_RANGES_UM["itc"][1] else "solid"
        return np.full(int(blob.sum()), GROWTH_PATTERNS.index(name), np.int8)
    ys, xs = np.nonzero(blob)
    y0, x0 = ys.min(), xs.min()
    field = smooth_field(rng, (ys.max() - y0 + 1, xs.max() - x0 + 1), max(length_um / um_per_px / 4, 40.0))[ys - y0, xs - x0]
    order = rng.permutation(len(names))  # which pattern takes which band of the field
    edges = np.quantile(field, np.cumsum(probs[order])[:-1])
    band = np.searchsorted(edges, field)
    return np.array([GROWTH_PATTERNS.index(names[i]) for i in order], np.int8)[band]

