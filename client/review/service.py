"""What the review web app does, without the web: hand a browser tab the next queue item in
priority order, render its pictures, and pass its decision (correction, rejection, skip) to the
correction queue. `review_server` is only HTTP glue over this.

Tabs: each browser tab has a random tab id (kept in the tab's sessionStorage, so it survives a
reload). An item opened in a tab is *held* by it: a reload gets the same item back, and another
tab can neither be given it nor submit to it. The queue records the claim (pending -> in review,
with who) when the pathologist starts correcting (`claim`), not when the page opens. So two tabs never overwrite each other's work; the
queue's own state checks refuse a second decision on an item in any case. Holds live in this
process's memory; after a restart, claims left in review go back with `ugafl queue reset-stale`.

Pixels: every picture is the item's patch grid (the patch image's size, at the item's mpp),
row 0 at the top; masks travel as greyscale PNGs holding 0/255.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ugafl.client.annotations.geometry import decode_png_mask
from ugafl.client.queue.store import CorrectionQueue, Item, QueueError
from ugafl.common.errors import UgaflError
from ugafl.common.heatmap import CMAP
from ugafl.common.log import get_logger

log = get_logger("review")

# Upper bounds of the uncertainty measures of a two-class model, in nats (entropy and mutual
# information are at most ln 2; the variance of a probability at most 1/4). Other measures (uga)
# are drawn against the patch's own 99th percentile.
MEASURE_MAX = {"entropy": math.log(2), "mutual_information": math.log(2), "variance": 0.25}
HOLD_S = 600.0  # an item opened in a tab but not yet claimed is freed after this long without a request from it
REJECT_REASONS = ("not tumour tissue / artefact", "cannot judge at this resolution", "other")


class ReviewError(UgaflError):
    """A request from the review app that was refused; the queue is unchanged."""


class HeldByOtherTab(ReviewError):
    """The item is open in another browser tab."""


@dataclass
class _Tab:
    item_id: int | None = None
    skipped: set[int] = field(default_factory=set)
    seen: float = field(default_factory=time.monotonic)  # its last request


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def uncertainty_scale(values: np.ndarray, measure: str) -> float:
    """Top of the colour scale: the measure's bound when it has one, else the patch's 99th percentile."""
    vmax = MEASURE_MAX.get(measure) or float(np.percentile(np.nan_to_num(values, nan=0.0), 99.0))
    return vmax if vmax > 0 else 1.0


def uncertainty_picture(values: np.ndarray, measure: str) -> tuple[np.ndarray, float]:
    """The uncertainty map coloured with the slide heat maps' colour map (dark = confident,
    bright = unsure), as uint8 RGB, and the value at the top of the scale."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    vmax = uncertainty_scale(values, measure)
    rgba = colormaps[CMAP](np.clip(values / vmax, 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3]), float(vmax)


def item_summary(item: Item, vmax: float) -> dict:
    """What the page shows of an item (JSON-ready)."""
    return {"id": item.id, "slide": item.slide, "x": item.x, "y": item.y, "box_width": item.width,
            "box_height": item.height, "mpp": item.mpp, "score": item.score, "measure": item.measure,
            "selection": item.selection, "model_version": item.model_version, "round": item.round,
            "state": item.state, "reviewer": item.reviewer, "uncertainty_max": vmax}


class ReviewService:
    """The review app's operations on the queue of `workspace`; safe to call from many threads."""

    def __init__(self, workspace: str | Path, hold_s: float = HOLD_S):
        self.queue = CorrectionQueue(workspace)
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._tabs: dict[str, _Tab] = {}
        self._holder: dict[int, str] = {}  # item id -> tab id

    def _tab(self, tab_id: str) -> _Tab:
        """The tab, marked as seen now; holds of unclaimed items by tabs idle for `hold_s` end."""
        now = time.monotonic()
        for item_id, holder in list(self._holder.items()):
            other = self._tabs[holder]
            if holder != tab_id and now - other.seen > self.hold_s and self.queue.get(item_id).state == "pending":
                log.info("item %d: released from an idle tab (%s) after %.0f s", item_id, holder[:8], now - other.seen)
                self._drop(other)
        tab = self._tabs.setdefault(tab_id, _Tab())
        tab.seen = now
        return tab

    def held_elsewhere(self, tab_id: str) -> int:
        """How many pending items other tabs hold (open, not yet claimed)."""
        with self._lock:
            return sum(1 for i, t in self._holder.items() if t != tab_id and self.queue.get(i).state == "pending")

    def close_tab(self, tab_id: str) -> None:
        """The tab is gone (its user signed out): an item it held but never claimed is free again."""
        with self._lock:
            tab = self._tabs.pop(_need_tab(tab_id), None)
            if tab is not None:
                self._drop(tab)

    def close(self) -> None:
        self.queue.close()

    # ------------------------------------------------------------------ reading

    def progress(self) -> dict:
        counts = self.queue.counts()
        done = counts["corrected"] + counts["rejected"]
        return {**counts, "done": done, "total": sum(counts.values()), "by": self.queue.decided_by()}

    def item_json(self, item_id: int) -> dict:
        item = self.queue.get(item_id)
        vmax = uncertainty_scale(self.queue.load_uncertainty(item_id), item.measure)
        with Image.open(item.image_path) as im:
            width, height = im.size
        return {**item_summary(item, vmax), "width": width, "height": height}

    def pictures(self, item_id: int) -> dict:
        """PNG bytes of the item's image, model mask (0/255) and coloured uncertainty."""
        item = self.queue.get(item_id)
        colour, vmax = uncertainty_picture(self.queue.load_uncertainty(item_id), item.measure)
        return {"image": item.image_path.read_bytes(), "model_mask": item.model_mask_path.read_bytes(),
                "uncertainty": png_bytes(colour), "uncertainty_scale": (0.0, vmax)}

    # ------------------------------------------------------------------ claiming

    def next_item(self, tab_id: str, reviewer: str) -> dict | None:
        """The item `tab_id` works on: the one it holds if still open (after a reload), else the
        highest-score pending item it has not skipped and no other tab holds. The tab holds it from
        now on, but the queue records a claim only when `reviewer` starts correcting it (`claim`,
        or a decision). None: nothing left."""
        tab_id = _need_tab(tab_id)
        with self._lock:
            tab = self._tab(tab_id)
            if tab.item_id is not None:
                held = self.queue.get(tab.item_id)
                if held.state == "pending" or (held.state == "in_review" and held.reviewer == reviewer):
                    return self.item_json(held.id)
                self._drop(tab)
            # An item this reviewer claimed that no tab holds (the server restarted): theirs to finish.
            mine = [i for i in self.queue.list("in_review") if i.reviewer == reviewer and i.id not in self._holder
                    and i.id not in tab.skipped]
            item = max(mine, key=lambda i: i.score) if mine else \
                self.queue.peek_pending(skip=tab.skipped | set(self._holder))
            if item is None:
                return None
            tab.item_id = item.id
            self._holder[item.id] = tab_id
        log.info("item %d opened by %s (tab %s)", item.id, reviewer, tab_id[:8])
        return self.item_json(item.id)

    def claim(self, tab_id: str, item_id: int, reviewer: str) -> None:
        """`reviewer` starts correcting the item the tab holds: pending -> in_review, in the audit."""
        with self._lock:
            self._check_holder(_need_tab(tab_id), item_id)
            self.queue.claim(item_id, reviewer)

    def _drop(self, tab: _Tab) -> None:
        if tab.item_id is not None:
            self._holder.pop(tab.item_id, None)
        tab.item_id = None

    def _check_holder(self, tab_id: str, item_id: int) -> _Tab:
        """The tab, if it holds the item; else a clear refusal."""
        tab = self._tabs.get(tab_id)
        if tab is not None:
            tab.seen = time.monotonic()
        if tab is None or tab.item_id != item_id:
            other = self._holder.get(item_id)
            if other is not None and other != tab_id:
                raise HeldByOtherTab(f"item {item_id} is open in another tab; this tab's work on it was not saved")
            state = self.queue.get(item_id).state
            raise ReviewError(f"item {item_id} is not open in this tab (it is {state}); nothing was saved")
        return tab

    # ------------------------------------------------------------------ decisions

    def submit(self, tab_id: str, item_id: int, mask_png: bytes, reviewer: str) -> None:
        """Store the tab's corrected mask (greyscale PNG, 0/255 or 0/1, the patch's size)."""
        with self._lock:
            tab = self._check_holder(_need_tab(tab_id), item_id)
            item = self.queue.get(item_id)
            with Image.open(item.image_path) as im:
                width, height = im.size
            mask = decode_png_mask(io.BytesIO(mask_png), (height, width), f"correction for item {item_id}")
            self.queue.submit_correction(item_id, mask.astype(np.uint8), reviewer)
            self._drop(tab)

    def reject(self, tab_id: str, item_id: int, reviewer: str, reason: str) -> None:
        with self._lock:
            tab = self._check_holder(_need_tab(tab_id), item_id)
            self.queue.reject(item_id, reviewer, reason)
            self._drop(tab)

    def skip(self, tab_id: str, item_id: int, reviewer: str) -> None:
        """Give the item back to the queue (pending) and pass over it for the rest of this tab."""
        with self._lock:
            tab = self._check_holder(_need_tab(tab_id), item_id)
            if self.queue.get(item_id).state == "in_review":
                try:
                    self.queue.release(item_id, reviewer)
                except QueueError:
                    pass  # reset as stale meanwhile: skipping still applies to this tab
            tab.skipped.add(item_id)
            self._drop(tab)


def _need_tab(tab_id: object) -> str:
    if not isinstance(tab_id, str) or not 8 <= len(tab_id) <= 64 or not tab_id.isalnum():
        raise ReviewError("tab id must be 8 to 64 letters or digits")
    return tab_id
