"""Patches of a slide as a stream of fixed-size batches, read ahead in threads with bounded memory."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from ugafl.common.log import get_logger
from ugafl.common.slide import Slide
from ugafl.common.tiling import PatchLocation

log = get_logger("streaming")


class _Stopped(Exception):
    """Raised inside a worker when the consumer has gone away."""


def iter_patch_batches(
    slide: Slide,
    patches: Sequence[PatchLocation],
    mpp: float,
    patch_size: int,
    batch_size: int = 16,
    workers: int = 2,
    prefetch: int = 2,
) -> Iterator[tuple[np.ndarray, list[PatchLocation]]]:
    """Yield (uint8 (B, patch_size, patch_size, 3), the B locations) in order; the last batch may
    be shorter.

    Each batch is read by one of `workers` threads (OpenSlide's C calls release the GIL). At most
    `prefetch + workers` batches are read or buffered ahead of the one the consumer holds, so
    memory stays within (prefetch + workers + 1) batches whatever the slide size. Every patch is
    exactly patch_size x patch_size: a read off by a pixel or two from rounding is resized. A
    SlideError in a worker is raised here, in the consumer; closing the generator early stops and
    joins the threads.
    """
    if batch_size < 1 or workers < 1 or prefetch < 0 or patch_size < 1:
        raise ValueError(
            f"need batch_size >= 1, workers >= 1, prefetch >= 0, patch_size >= 1; "
            f"got {batch_size}, {workers}, {prefetch}, {patch_size}"
        )
    batches = [list(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)]
    if not batches:
        return
    stop = threading.Event()

    def read_batch(locations: list[PatchLocation]) -> np.ndarray:
        out = np.empty((len(locations), patch_size, patch_size, 3), np.uint8)
        for k, patch in enumerate(locations):
            if stop.is_set():
                raise _Stopped
            out[k] = _read_patch(slide, patch, mpp, patch_size)
        return out

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ugafl-patches")
    pending: deque[tuple[Future[np.ndarray], list[PatchLocation]]] = deque()
    ahead = prefetch + workers  # batches submitted beyond the one being handed over
    try:
        pending.append((pool.submit(read_batch, batches[0]), batches[0]))
        next_batch = 1
        while pending:
            future, locations = pending.popleft()
            while len(pending) < ahead and next_batch < len(batches):
                pending.append((pool.submit(read_batch, batches[next_batch]), batches[next_batch]))
                next_batch += 1
            array = future.result()
            del future
            yield array, locations
            # Keep no reference to a yielded batch: the consumer's is the only one.
            del array
    finally:
        stop.set()
        for future, _ in pending:
            future.cancel()
        pending.clear()
        pool.shutdown(wait=True, cancel_futures=True)


def _read_patch(slide: Slide, patch: PatchLocation, mpp: float, patch_size: int) -> np.ndarray:
    """One patch as RGB uint8 (patch_size, patch_size, 3)."""
    rgb = slide.read_region((patch.x, patch.y), (patch.width, patch.height), mpp)
    if rgb.shape[:2] == (patch_size, patch_size):
        return rgb
    if max(abs(rgb.shape[0] - patch_size), abs(rgb.shape[1] - patch_size)) > 2:
        raise ValueError(
            f"patch at ({patch.x}, {patch.y}) of {patch.width}x{patch.height} level-0 px is "
            f"{rgb.shape[1]}x{rgb.shape[0]} px at {mpp:g} µm/px, not {patch_size}: wrong patch_size or mpp"
        )
    return np.asarray(Image.fromarray(rgb).resize((patch_size, patch_size), Image.Resampling.BILINEAR))
