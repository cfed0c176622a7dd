"""A patch proposed for the correction queue (`NewItem`): where it came from (`PatchOrigin`), why it
was chosen (`PatchReason`) and its pixels (`PatchPixels`), and the check that turns one into what
the queue writes (`check_new_item`), refusing anything malformed before a byte is written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ugafl.client.queue.items import QueueError, check_binary_mask, need_str, size_text


@dataclass(frozen=True)
class PatchOrigin:
    """Where a patch came from: the slide's name, the box (x, y, width, height) in level-0 px,
    and the resolution it was read at, µm/px."""

    slide: str
    box: tuple[int, int, int, int]
    mpp: float


@dataclass(frozen=True)
class PatchReason:
    """Why a patch was proposed: its `score` by `measure`, the `selection` strategy that chose it,
    and the model version and annotation round it was chosen for."""

    score: float
    measure: str
    selection: str
    model_version: str
    round: int


@dataclass(frozen=True, eq=False)
class PatchPixels:
    """What the pathologist sees: `image` uint8 RGB (H, W, 3), the model's mask (H, W) (bool, or
    0/1 or 0/255 integers) and the per-pixel uncertainty (H, W), real and finite."""

    image: np.ndarray
    model_mask: np.ndarray
    uncertainty: np.ndarray


@dataclass(frozen=True, eq=False)
class NewItem:
    """One patch to queue."""

    origin: PatchOrigin
    reason: PatchReason
    pixels: PatchPixels


@dataclass(frozen=True, eq=False)
class CheckedItem:
    """A `NewItem` that passed every check, in the types the queue stores."""

    item: NewItem
    box: tuple[int, int, int, int]  # level-0 (x, y, width, height), ints
    image: np.ndarray  # uint8 (H, W, 3)
    model_mask: np.ndarray  # bool (H, W)
    uncertainty: np.ndarray  # float32 (H, W), finite


def check_new_item(item: NewItem) -> CheckedItem:
    """`item` checked field by field; QueueError naming the first field that is wrong."""
    origin, reason = item.origin, item.reason
    need_str("slide", origin.slide)
    for name, value in (("measure", reason.measure), ("selection", reason.selection),
                        ("model_version", reason.model_version)):
        need_str(name, value)
    box = _check_box(origin.box)
    mpp, score, round_ = origin.mpp, reason.score, reason.round
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise QueueError(f"mpp must be a positive number, got {mpp!r}")
    if not (isinstance(score, (int, float, np.floating)) and math.isfinite(float(score))):
        raise QueueError(f"score must be a finite number, got {score!r}")
    if isinstance(round_, bool) or not isinstance(round_, (int, np.integer)) or round_ < 0:
        raise QueueError(f"round must be a non-negative integer, got {round_!r}")
    image, mask, unc = _check_pixels(item.pixels)
    return CheckedItem(item=item, box=box, image=image, model_mask=mask, uncertainty=unc)


def _check_box(box: Any) -> tuple[int, int, int, int]:
    """Level-0 (x, y, width, height) as ints: x, y >= 0, width, height > 0."""
    try:
        x, y, w, h = (int(v) for v in box)
        if any(int(v) != v for v in box):
            raise ValueError
    except (TypeError, ValueError):
        raise QueueError(f"box must be four integers (x, y, width, height), got {box!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise QueueError(f"box {box!r}: x, y must be >= 0 and width, height > 0")
    return x, y, w, h


def _check_pixels(pixels: PatchPixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), model mask bool (H, W), uncertainty float32 (H, W))."""
    image = np.asarray(pixels.image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise QueueError(f"image must be uint8 (height, width, 3) RGB, got {image.dtype} {image.shape}")
    hw = image.shape[:2]
    model_mask = np.asarray(pixels.model_mask)
    if model_mask.shape != hw:
        raise QueueError(f"model_mask is {size_text(model_mask.shape) if model_mask.ndim == 2 else model_mask.shape}, "
                         f"image is {size_text(hw)}")
    mask = check_binary_mask("model_mask", model_mask)
    uncertainty = np.asarray(pixels.uncertainty)
    if uncertainty.shape != hw:
        raise QueueError(f"uncertainty is {size_text(uncertainty.shape) if uncertainty.ndim == 2 else uncertainty.shape}, "
                         f"image is {size_text(hw)}")
    if not np.issubdtype(uncertainty.dtype, np.number) or np.issubdtype(uncertainty.dtype, np.complexfloating):
        raise QueueError(f"uncertainty must be a real-valued array, got dtype {uncertainty.dtype}")
    unc = uncertainty.astype(np.float32)
    if not np.isfinite(unc).all():
        raise QueueError("uncertainty has NaN or infinite values")
    return image, mask, unc
