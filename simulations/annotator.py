"""A simulated pathologist for experiments: corrects the queue's open items with the dataset's
truth mask (or one simulated rater's mask), optionally with a noisy boundary, and submits each
correction through `CorrectionQueue.submit_correction`, the same call a person's corrections go
through (so validation, audit and durability are the same)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ugafl.client.queue.store import CorrectionQueue, Item
from ugafl.common.errors import ConfigError, DataError
from ugafl.common.log import get_logger
from ugafl.common.manifest import SlideRecord, load_manifest
from ugafl.common.masks import MaskImage, load_mask

log = get_logger("simulated_annotator")


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask brought to (height, width): unchanged when it already is, else nearest-resized
    (the patch image may be a pixel off the box's exact size at the item's mpp)."""
    if mask.shape == (height, width):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 0


def truth_region(mask: MaskImage, item: Item, slide_mpp: float, height: int, width: int) -> np.ndarray:
    """The label of the item's level-0 box at the item's mpp, as bool (height, width)."""
    coverage = mask.region((item.x, item.y), (item.width, item.height), slide_mpp, item.mpp)
    return fit_mask(coverage >= 0.5, height, width)


def perturb_boundary(mask: np.ndarray, max_px: int, rng: np.random.Generator) -> np.ndarray:
    """Dilate (r > 0) or erode (r < 0) the mask by r pixels, r drawn uniformly from -max_px..max_px."""
    if max_px <= 0 or not mask.any():
        return mask
    r = int(rng.integers(-max_px, max_px + 1))
    if r == 0:
        return mask
    structure = ndimage.generate_binary_structure(2, 1)
    if r > 0:
        return ndimage.binary_dilation(mask, structure, iterations=r)
    return ndimage.binary_erosion(mask, structure, iterations=-r, border_value=1)


def _records_by_stem(manifest_dir: Path) -> tuple[dict[str, SlideRecord], object]:
    manifest = load_manifest(manifest_dir)
    out: dict[str, SlideRecord] = {}
    for rec in manifest.slides:
        out.setdefault(Path(rec.path).stem, rec)
    return out, manifest


def annotate(workspace: str | Path, manifest_dir: str | Path, who: str = "simulated-annotator", rater: int | None = None,
             boundary_noise_px: int = 0, seed: int = 0, limit: int | None = None) -> int:
    """Correct the open (pending or in_review) items of the queue, lowest id first; the number submitted.

    The label is the manifest's truth mask for the item's slide (found by file stem), or rater
    `rater`'s mask (1-based) when given; its region for the item's box at the item's mpp,
    thresholded at 0.5 coverage and fitted to the stored patch. With `boundary_noise_px` > 0 each
    item's mask is dilated or eroded by a random 0..boundary_noise_px pixels, drawn from a
    generator seeded by (seed, item id): the same items get the same corrections. Raises
    DataError (nothing submitted) when an item's slide is not in the manifest or lacks the mask.
    """
    if rater is not None and (isinstance(rater, bool) or rater < 1):
        raise ConfigError(f"rater must be a 1-based rater number, got {rater!r}")
    if boundary_noise_px < 0:
        raise ConfigError(f"boundary noise must be >= 0 px, got {boundary_noise_px}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    records, manifest = _records_by_stem(Path(manifest_dir))
    queue = CorrectionQueue(workspace)
    try:
        items = sorted(queue.list("pending") + queue.list("in_review"), key=lambda it: it.id)
        if limit is not None:
            items = items[:limit]
        # Check every item's slide and mask before submitting anything.
        sources: dict[str, tuple[SlideRecord, Path]] = {}
        for item in items:
            if item.slide in sources:
                continue
            rec = records.get(item.slide)
            if rec is None:
                raise DataError(f"{manifest.root}: no slide with file stem '{item.slide}' in the manifest "
                                f"(queue item {item.id}); is this the dataset the queue was filled from?")
            if rater is None:
                rel = rec.mask
            elif rater > len(rec.rater_masks):
                raise DataError(f"slide {rec.slide_id} has {len(rec.rater_masks)} rater masks, no rater {rater}")
            else:
                rel = rec.rater_masks[rater - 1]
            path = manifest.path_of(rel)
            if not path.is_file():
                raise DataError(f"{path}: mask file of slide {rec.slide_id} missing")
            sources[item.slide] = (rec, path)
        masks: dict[str, MaskImage] = {}
        submitted = 0
        for item in items:
            rec, path = sources[item.slide]
            if item.slide not in masks:
                masks[item.slide] = load_mask(path)
            with Image.open(item.image_path) as im:
                width, height = im.size
            label = truth_region(masks[item.slide], item, rec.mpp, height, width)
            if boundary_noise_px:
                label = perturb_boundary(label, boundary_noise_px, np.random.default_rng([int(seed), int(item.id)]))
            queue.submit_correction(item.id, label, who)
            submitted += 1
        log.info("%s corrected %d item(s)", who, submitted)
        return submitted
    finally:
        queue.close()


def simulated_annotator(workspace: Path, data: Path | None, seed: int) -> int:
    """The `simulated` annotator plug-in (site config `annotator = "simulated"`, reading the
    dataset folder `annotator_data`): corrects every open item with the truth mask."""
    if data is None:
        raise ConfigError("the simulated annotator needs annotator_data (a dataset folder) in the site config")
    return annotate(workspace, data, who="simulated-annotator", seed=seed)


simulated_annotator.needs_data = True  # the dataset folder with the truth masks
