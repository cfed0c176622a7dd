"""The site's labelled data as training and evaluation read it: every corrected queue item."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ugafl.client.queue.store import CorrectionQueue


def corrected_patches(workspace: Path, round_: int | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Images uint8 (N, H, W, 3) and corrected masks uint8 (N, H, W) of every corrected item (of
    one query round, if given), with their ids; items of another patch size than the first are left out."""
    with CorrectionQueue(workspace) as queue:
        items = [i for i in queue.list("corrected") if round_ is None or i.round == round_]
        if not items:
            return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0), np.uint8), []
        images = [queue.load_image(i.id) for i in items]
        masks = [queue.load_correction(i.id).astype(np.uint8) for i in items]
    shape = images[0].shape[:2]
    keep = [k for k, im in enumerate(images) if im.shape[:2] == shape]
    return (np.stack([images[k] for k in keep]), np.stack([masks[k] for k in keep]), [items[k].id for k in keep])
