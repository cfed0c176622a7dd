"""Training patches from a labelled slide: centres drawn on tumour (oversampled) and on tissue,
read at the model's mpp through the streaming reader, with their 0/1 labels from the mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ugafl.common.masks import load_mask
from ugafl.common.slide import open_slide
from ugafl.common.streaming import iter_patch_batches
from ugafl.common.tiling import PatchLocation
from ugafl.common.tissue import detect_tissue


@dataclass
class PatchBank:
    images: np.ndarray  # uint8 (N, P, P, 3) at `mpp`
    labels: np.ndarray  # uint8 (N, P, P), 1 = tumour
    mpp: float
    locations: list[tuple[str, int, int]]  # (slide id, level-0 x, level-0 y) of each patch
    raters: np.ndarray | None = None  # uint8 (N, R, P, P): each simulated rater's label, when asked for

    @staticmethod
    def concat(banks: list["PatchBank"]) -> "PatchBank":
        raters = np.concatenate([b.raters for b in banks]) if all(b.raters is not None for b in banks) else None
        return PatchBank(np.concatenate([b.images for b in banks]), np.concatenate([b.labels for b in banks]),
                         banks[0].mpp, [loc for b in banks for loc in b.locations], raters)


def sample_patches(slide_path: str | Path, mask_path: str | Path, slide_id: str, mpp: float, patch_size: int, count: int,
                   tumour_fraction: float, rng: np.random.Generator, tissue_mpp: float = 8.0,
                   rater_paths: list | tuple = ()) -> PatchBank:
    """`count` patches of `patch_size` px at `mpp` µm/px; about `tumour_fraction` of them centred
    on a tumour pixel (when the slide has tumour), the rest on tissue. With `rater_paths`, each
    rater's label of the same patches too."""
    mask = load_mask(mask_path)
    rater_masks = [load_mask(p) for p in rater_paths]
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, tissue_mpp)
        size0 = round(patch_size * mpp / slide.mpp)
        ty, tx = np.nonzero(mask.array)
        gy, gx = np.nonzero(tissue.mask)
        n_tumour = rng.binomial(count, tumour_fraction) if len(ty) else 0
        centres = []  # level-0 (x, y)
        if n_tumour:
            pick = rng.integers(0, len(ty), n_tumour)
            centres += list(zip((tx[pick] + rng.random(n_tumour)) * mask.mpp / slide.mpp, (ty[pick] + rng.random(n_tumour)) * mask.mpp / slide.mpp))
        n_rest = count - n_tumour
        if len(gy) == 0:
            gy, gx = np.array([tissue.mask.shape[0] // 2]), np.array([tissue.mask.shape[1] // 2])
        pick = rng.integers(0, len(gy), n_rest)
        centres += list(zip((gx[pick] + rng.random(n_rest)) * tissue.mpp / slide.mpp, (gy[pick] + rng.random(n_rest)) * tissue.mpp / slide.mpp))
        locations = [PatchLocation(int(cx - size0 / 2), int(cy - size0 / 2), size0, size0, 1.0) for cx, cy in centres]
        images = np.empty((count, patch_size, patch_size, 3), np.uint8)
        labels = np.empty((count, patch_size, patch_size), np.uint8)
        raters = np.empty((count, len(rater_masks), patch_size, patch_size), np.uint8) if rater_masks else None
        i = 0
        for batch, locs in iter_patch_batches(slide, locations, mpp, patch_size, batch_size=32):
            images[i : i + len(batch)] = batch
            for loc in locs:
                cover = mask.region((loc.x, loc.y), (loc.width, loc.height), slide.mpp, mpp)
                labels[i] = _fit(cover, patch_size) >= 0.5
                for r, rater in enumerate(rater_masks):
                    raters[i, r] = _fit(rater.region((loc.x, loc.y), (loc.width, loc.height), slide.mpp, mpp), patch_size) >= 0.5
                i += 1
    return PatchBank(images, labels, mpp, [(slide_id, loc.x, loc.y) for loc in locations], raters)


def _fit(array: np.ndarray, size: int) -> np.ndarray:
    """Crops or edge-pads a 2-D array to size x size (absorbs ±1 px rounding)."""
    out = array[:size, :size]
    if out.shape != (size, size):
        out = np.pad(out, ((0, size - out.shape[0]), (0, size - out.shape[1])), mode="edge")
    return out
