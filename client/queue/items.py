"""What the correction queue holds and hands out: its states, one item (`Item`), one audit row
(`AuditEntry`), the error it refuses requests with, and the checks every request goes through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ugafl.common.errors import UgaflError

STATES = ("pending", "in_review", "corrected", "rejected")
OPEN_STATES = ("pending", "in_review")  # an item in these can still be corrected or rejected


class QueueError(UgaflError):
    """A queue request that was refused; nothing was changed."""


@dataclass(frozen=True)
class Item:
    """One queue row; the *_path fields are absolute (correction_path None until corrected).
    Box in level-0 px, read at `mpp` µm/px."""

    id: int
    slide: str
    x: int
    y: int
    width: int
    height: int
    mpp: float
    score: float
    measure: str
    selection: str  # the selection strategy that chose it
    model_version: str
    round: int
    state: str
    reviewer: str | None
    created_at: str
    updated_at: str
    image_path: Path
    model_mask_path: Path
    uncertainty_path: Path
    correction_path: Path | None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Level-0 (x, y, width, height)."""
        return (self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    item_id: int
    at: str  # UTC ISO 8601 with microseconds
    who: str
    action: str  # add, claim, correct, reject, release, reset_stale
    from_state: str | None
    to_state: str
    detail: dict


def need_str(field: str, value: Any) -> str:
    """`value` if it is a non-empty string, else QueueError naming `field`."""
    if not isinstance(value, str) or not value.strip():
        raise QueueError(f"{field} must be a non-empty string, got {value!r}")
    return value


def need_who(who: Any) -> str:
    """The name of who makes a request (a non-empty string)."""
    return need_str("who", who)


def check_open(item: Item, verb: str) -> None:
    """QueueError unless the item can still be corrected or rejected (`verb` names the request)."""
    if item.state not in OPEN_STATES:
        by = f" by {item.reviewer}" if item.reviewer else ""
        raise QueueError(f"item {item.id} is already {item.state}{by}; cannot {verb} it")


def check_binary_mask(field: str, mask: Any) -> np.ndarray:
    """A bool (H, W) array from a bool mask or an integer one holding only {0,1} or {0,255}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise QueueError(f"{field} must be 2-D (height, width), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.integer):
        raise QueueError(f"{field} must be bool or uint8 (0/1 or 0/255), got dtype {mask.dtype}")
    values = set(np.unique(mask).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        bad = sorted(values - {0, 1, 255}) or sorted(values)
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise QueueError(f"{field} has values {shown}; expected only 0/1 or 0/255")
    return mask > 0


def size_text(shape: tuple[int, ...]) -> str:
    """'<width>x<height>' of an (H, W, ...) shape."""
    return f"{shape[1]}x{shape[0]}"
