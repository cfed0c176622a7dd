"""Patch batches streamed in order, read ahead in threads with bounded memory, errors surfaced,
threads stopped when the consumer stops."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ugafl.common.errors import SlideError
from ugafl.common.slide import Slide, open_slide
from ugafl.common.streaming import iter_patch_batches
from ugafl.common.tiling import PatchLocation, patch_grid
from ugafl.common.tissue import TissueMask

EVERYTHING = TissueMask(np.ones((96, 128), bool), 8.0)


class CountingSlide:
    """Stands in for a Slide: counts reads started, and can fail on a chosen read."""

    def __init__(self, slide: Slide, fail_at: int | None = None) -> None:
        self.slide = slide
        self.mpp = slide.mpp
        self.fail_at = fail_at
        self.reads = 0
        self._lock = threading.Lock()

    def read_region(self, location, size, mpp):
        with self._lock:
            self.reads += 1
            count = self.reads
        if self.fail_at is not None and count >= self.fail_at:
            raise SlideError(f"{self.slide.path}: cannot be read: simulated failure")
        return self.slide.read_region(location, size, mpp)


@pytest.fixture
def slide(synthetic_tiff):
    with open_slide(synthetic_tiff.path) as opened:
        yield opened


@pytest.fixture
def no_leaked_threads():
    before = threading.active_count()
    yield before
    assert threading.active_count() == before


def test_yields_every_patch_in_order_with_the_right_pixels(slide, no_leaked_threads):
    patches = patch_grid(slide, 2.0, 64, tissue=EVERYTHING, min_tissue=0)
    assert len(patches) == 8 * 6
    seen: list[PatchLocation] = []
    sizes = []
    for batch, locations in iter_patch_batches(slide, patches, 2.0, 64, batch_size=5, workers=3):
        assert batch.dtype == np.uint8 and batch.shape == (len(locations), 64, 64, 3)
        np.testing.assert_array_equal(batch[-1], slide.read_region((locations[-1].x, locations[-1].y), (256, 256), 2.0))
        seen.extend(locations)
        sizes.append(len(locations))
    assert seen == patches
    assert sizes == [5] * 9 + [3]


def test_read_ahead_is_bounded(slide, no_leaked_threads):
    batch_size, workers, prefetch = 4, 2, 2
    patches = patch_grid(slide, 0.5, 32, tissue=EVERYTHING, min_tissue=0)[:400]  # 100 batches
    counting = CountingSlide(slide)

    def started() -> int:
        with counting._lock:
            return -(-counting.reads // batch_size)  # batches begun, whole or in part

    most_ahead = 0
    deadline = time.monotonic() + 60  # for the whole stream; generous, a busy machine reads slowly
    for k, (batch, _) in enumerate(
        iter_patch_batches(counting, patches, 0.5, 32, batch_size=batch_size, workers=workers, prefetch=prefetch),
        start=1,
    ):
        # A slow consumer: it holds each batch until the readers have run ahead as far as they may
        # (a condition, not a guess of how long reading takes)...
        allowed = min(k + workers + prefetch, 100)
        while started() < allowed and time.monotonic() < deadline:
            time.sleep(0.0005)
        # ...and a moment longer, part of the test: a reader that ignored the bound would start here.
        time.sleep(0.002)
        # alive: the batch held here, `workers` being read, `prefetch` waiting; never more
        now = started()
        assert now <= k + workers + prefetch
        most_ahead = max(most_ahead, now - k)
    assert k == 100
    assert most_ahead == workers + prefetch  # and it does read ahead that far


def test_slide_error_in_a_worker_reaches_the_consumer(slide, no_leaked_threads):
    patches = patch_grid(slide, 1.0, 64, tissue=EVERYTHING, min_tissue=0)
    failing = CountingSlide(slide, fail_at=30)
    received = 0
    with pytest.raises(SlideError, match="simulated failure"):
        for batch, _ in iter_patch_batches(failing, patches, 1.0, 64, batch_size=4):
            received += len(batch)
    assert 0 < received < 30


def test_unreadable_slide_fails_mid_stream_with_a_slide_error(fixtures_dir, no_leaked_threads):
    path = fixtures_dir / "unreadable.svs"
    with open_slide(path, mpp=0.5) as broken:
        patches = [PatchLocation(x, 0, 8, 8, 1.0) for x in range(0, 16, 4)] * 4
        stream = iter_patch_batches(broken, patches, 0.5, 8, batch_size=2)
        with pytest.raises(SlideError) as caught:
            next(stream)
    assert str(caught.value) == f"{path}: cannot be read: Bogus marker length"


def test_closing_early_stops_the_threads(slide):
    before = threading.active_count()
    patches = patch_grid(slide, 0.5, 64, tissue=EVERYTHING, min_tissue=0)
    stream = iter_patch_batches(slide, patches, 0.5, 64, batch_size=8, workers=3)
    next(stream)
    assert threading.active_count() > before
    stream.close()
    assert threading.active_count() == before
    # and breaking out of a for loop, once the generator is dropped
    for _ in iter_patch_batches(slide, patches, 0.5, 64, batch_size=8, workers=3):
        break
    assert threading.active_count() == before


def test_off_by_one_reads_are_resized_to_the_patch_size(slide):
    odd = [PatchLocation(100, 100, 126, 126, 1.0), PatchLocation(300, 100, 130, 130, 1.0)]  # 63 and 65 px
    (batch, _), = list(iter_patch_batches(slide, odd, 1.0, 64, batch_size=2))
    assert batch.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="wrong patch_size"):
        list(iter_patch_batches(slide, [PatchLocation(0, 0, 512, 512, 1.0)], 1.0, 64))


def test_empty_and_invalid_requests(slide):
    assert list(iter_patch_batches(slide, [], 1.0, 64)) == []
    with pytest.raises(ValueError):
        list(iter_patch_batches(slide, [PatchLocation(0, 0, 128, 128, 1.0)], 1.0, 64, workers=0))
