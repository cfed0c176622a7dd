"""Shared set-up for the review app tests: a workspace whose queue holds patches that look like
H&E (pink tissue, purple blobs), a model mask shaped as a ring (a disc with a hole, so fill has
something to fill) and uncertainty high along the ring's edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue

SIZE = 128  # patch pixels (square); the page shows it at 512 CSS px, 4 screen px per patch px
RING_OUTER, RING_INNER = 40, 12  # radii in patch pixels, centred on the patch


def ring_mask(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    r = np.hypot(yy - size / 2, xx - size / 2)
    return (r <= RING_OUTER) & (r > RING_INNER)


def he_patch(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (232, 190, 214)  # eosin pink
    for _ in range(40):  # haematoxylin-purple nuclei
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 5)
        yy, xx = np.mgrid[:size, :size]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (110, 60, 150)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def edge_uncertainty(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    distance = np.where(mask, ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))
    return (np.log(2) * np.exp(-distance / 4.0)).astype(np.float32)


def make_review_workspace(ws: Path, scores: list[float], slide: str = "RST_001.tif") -> list[int]:
    """Queue one patch per score (item i at level-0 x = 512 i); returns the item ids in order."""
    mask = ring_mask()
    with CorrectionQueue(ws) as queue:
        return [queue.add(NewItem(PatchOrigin(slide, (512 * i, 1024, 256, 256), 2.0),
                                  PatchReason(score, "entropy", "stochastic-batch", "ec376ad29d8a", 1),
                                  PatchPixels(he_patch(i), mask, edge_uncertainty(mask))))
                for i, score in enumerate(scores)]
