"""Filling the queue in three steps: `plan` picks boxes without reading a pixel (taken boxes
excluded, each box at its row's mpp), `prepare` computes every patch before anything is written,
`commit` adds them; `fill_queue` composes them all-or-nothing. Slides and the model are stand-ins."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import ugafl.client.queue.fill as fill
from ugafl.client.queue.fill import FillRequest, PlannedPatch, check_request, commit, fill_queue, plan, prepare
from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue
from ugafl.common.errors import ConfigError, DataError

PATCH = 16  # patch side, px at the box's mpp
METHOD = SimpleNamespace(cfg=SimpleNamespace(patch_size=PATCH, mpp=2.0), name="tta")
# (slide, x, y, w, h, mpp, uga): slide "a" has the two highest scores, "b" the third.
ROWS = [("a", 0, 0, 32, 32, 2.0, 0.9), ("a", 64, 0, 32, 32, 2.0, 0.8), ("a", 128, 0, 32, 32, 2.0, 0.1),
        ("b", 0, 0, 64, 64, 4.0, 0.7), ("b", 128, 0, 64, 64, 4.0, 0.2)]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    folder = tmp_path / "ws" / "patch_scores"
    folder.mkdir(parents=True)
    for stem in ("a", "b"):
        lines = ["x,y,width,height,mpp,uga"] + [f"{x},{y},{w},{h},{m},{u}" for s, x, y, w, h, m, u in ROWS if s == stem]
        (folder / f"{stem}.tta.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "ws"


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for stem in ("a", "b"):
        (folder / f"{stem}.tif").write_bytes(b"stand-in")
    return folder


class FakeSlide:
    """Reads a box as a grey patch whose value encodes x; `broken` boxes raise DataError. Level 0
    is 1 µm/px, so the test boxes (64 px at 4 µm/px, 32 px at 2 µm/px) are PATCH px squares."""

    reads: list[tuple[str, tuple[int, int], float]] = []
    mpp = 1.0

    def __init__(self, path: Path, broken: set[tuple[int, int]]):
        self.path, self.broken = path, broken

    def __enter__(self) -> FakeSlide:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read_region(self, xy: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        if xy in self.broken:
            raise DataError(f"{self.path}: box at {xy} is unreadable")
        FakeSlide.reads.append((self.path.stem, xy, mpp))
        return np.full((PATCH, PATCH, 3), xy[0] % 256, np.uint8)


@pytest.fixture
def stand_ins(monkeypatch) -> dict:
    """Slides that read through FakeSlide and a model whose mask is the left half, uncertainty 0.5."""
    broken: dict[str, set] = {}
    FakeSlide.reads = []
    monkeypatch.setattr(fill, "open_slide",
                        lambda path, mpp=None: FakeSlide(Path(path), broken.get(Path(path).stem, set())))

    def outputs(method, image, measure, device="cpu"):
        mask = np.zeros(image.shape[:2], bool)
        mask[:, : PATCH // 2] = True
        return mask, np.full(image.shape[:2], 0.5, np.float32)

    monkeypatch.setattr(fill, "patch_outputs", outputs)
    return broken


def request(**changes) -> FillRequest:
    return check_request(FillRequest(**{**dict(selection="top-k", budget=3, seed=0, model_version="v1", round=2),
                                        **changes}), "tta")


def test_check_request_fills_in_the_measure_and_refuses_bad_fields():
    assert request().measure == "uga"
    assert check_request(FillRequest("random", 1, 0, "v"), "edue").measure == "variance"
    for changes, message in ((dict(selection="most-uncertain"), "unknown selection"), (dict(budget=0), "budget"),
                             (dict(measure="confidence"), "unknown measure"), (dict(batches=0), "batches"),
                             (dict(max_per_slide=0), "max_per_slide")):
        with pytest.raises(ConfigError, match=message):
            request(**changes)


def test_plan_ranks_excludes_taken_boxes_and_takes_each_rows_mpp(ws: Path):
    tables = fill.score_tables(ws, "tta")
    planned = plan(tables, [], request(), default_mpp=9.0)
    assert [(p.origin.slide, p.origin.box, p.origin.mpp, p.score) for p in planned] == [
        ("a", (0, 0, 32, 32), 2.0, 0.9), ("a", (64, 0, 32, 32), 2.0, 0.8), ("b", (0, 0, 64, 64), 4.0, 0.7)]
    # A queued box overlapping a's best one (on another slide it would not count) is excluded.
    taken = [("a", 16, 16, 32, 32), ("c", 64, 0, 32, 32)]
    assert [p.score for p in plan(tables, taken, request(), default_mpp=9.0)] == [0.8, 0.7, 0.2]


def test_plan_ranks_by_the_requested_scorings_column(tmp_path: Path):
    table = tmp_path / "a.tta.csv"
    table.write_text("x,y,width,height,mpp,uga,uga_paper\n0,0,32,32,2.0,0.9,10\n64,0,32,32,2.0,0.1,500\n"
                     "128,0,32,32,2.0,0.5,\n")  # the last is under the paper's tissue floor: not a candidate
    by_mean = plan([table], [], request(budget=3), default_mpp=2.0)
    by_paper = plan([table], [], request(budget=3, scoring="paper"), default_mpp=2.0)
    assert [p.origin.box[0] for p in by_mean] == [0, 128, 64]
    assert [(p.origin.box[0], p.score) for p in by_paper] == [(64, 500.0), (0, 10.0)]
    with pytest.raises(ConfigError, match="unknown patch scoring 'median'"):
        request(scoring="median")
    (tmp_path / "b.tta.csv").write_text("x,y,width,height,mpp,uga\n0,0,32,32,2.0,0.9\n")  # scored before the column
    with pytest.raises(DataError, match="b.tta.csv: no column 'uga_paper'"):
        plan([tmp_path / "b.tta.csv"], [], request(scoring="paper"), default_mpp=2.0)


def test_prepare_reads_every_patch_in_plan_order_and_writes_nothing(ws: Path, slides: Path, stand_ins: dict):
    planned = [PlannedPatch(PatchOrigin("b", (0, 0, 64, 64), 4.0), 0.7),
               PlannedPatch(PatchOrigin("a", (64, 0, 32, 32), 2.0), 0.8)]
    items = prepare(planned, slides, METHOD, request())
    assert [(i.origin, i.reason) for i in items] == [
        (planned[0].origin, PatchReason(0.7, "uga", "top-k", "v1", 2)),
        (planned[1].origin, PatchReason(0.8, "uga", "top-k", "v1", 2))]
    assert [int(i.pixels.image[0, 0, 0]) for i in items] == [0, 64]
    assert items[0].pixels.model_mask[:, 0].all() and not items[0].pixels.model_mask[:, -1].any()
    assert FakeSlide.reads == [("b", (0, 0), 4.0), ("a", (64, 0), 2.0)]  # slide by slide, at each row's mpp
    assert not (ws / "queue.db").exists()


def test_commit_adds_in_order(ws: Path):
    image, mask, unc = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool), np.zeros((4, 4), np.float32)
    items = [NewItem(PatchOrigin("a", (64 * k, 0, 32, 32), 2.0), PatchReason(1.0 - k, "uga", "random", "v1", 0),
                     PatchPixels(image, mask, unc)) for k in range(2)]
    with CorrectionQueue(ws) as queue:
        ids = commit(queue, items)
        assert [queue.get(i).box for i in ids] == [(0, 0, 32, 32), (64, 0, 32, 32)]
        assert [queue.get(i).selection for i in ids] == ["random", "random"]


def test_fill_queue_queues_the_plan_and_is_all_or_nothing(ws: Path, slides: Path, stand_ins: dict):
    stand_ins["b"] = {(0, 0)}  # the last patch of the plan cannot be read
    with pytest.raises(DataError, match="unreadable"):
        fill_queue(ws, slides, METHOD, "tta", FillRequest("top-k", 3, 0, "v1", 2))
    with CorrectionQueue(ws) as queue:
        assert queue.list() == []  # a's two patches were ready, yet nothing was added

    (slides / "b.tif").unlink()  # a missing slide: found out before any pixel is read
    FakeSlide.reads = []
    with pytest.raises(DataError, match="no slide file named b"):
        fill_queue(ws, slides, METHOD, "tta", FillRequest("top-k", 3, 0, "v1", 2))
    assert FakeSlide.reads == []

    ids = fill_queue(ws, slides, METHOD, "tta", FillRequest("top-k", 2, 0, "v1", 2))
    with CorrectionQueue(ws) as queue:
        items = [queue.get(i) for i in ids]
    assert [(i.slide, i.box, i.score, i.selection, i.model_version, i.round) for i in items] == [
        ("a", (0, 0, 32, 32), 0.9, "top-k", "v1", 2), ("a", (64, 0, 32, 32), 0.8, "top-k", "v1", 2)]
    (slides / "b.tif").write_bytes(b"stand-in")
    stand_ins.clear()
    rest = fill_queue(ws, slides, METHOD, "tta", FillRequest("top-k", 5, 0, "v1", 3))
    with CorrectionQueue(ws) as queue:
        assert [queue.get(i).score for i in rest] == [0.7, 0.2, 0.1]
    assert fill_queue(ws, slides, METHOD, "tta", FillRequest("top-k", 5, 0, "v1", 4)) == []  # nothing left


def test_class_aware_selection_keeps_part_of_the_budget_for_predicted_tumour(tmp_path: Path):
    # six boxes on one slide: the three most uncertain have no predicted tumour
    rows = [(0, 0.9, 0.0), (64, 0.8, 0.0), (128, 0.7, 0.0), (192, 0.3, 0.2), (256, 0.2, 0.5), (320, 0.1, 0.0)]
    table = tmp_path / "a.tta.csv"
    table.write_text("x,y,width,height,mpp,tumour_fraction,uga\n" +
                     "".join(f"{x},0,32,32,2.0,{t},{u}\n" for x, u, t in rows))
    plain = plan([table], [], request(budget=4), default_mpp=2.0)
    assert [p.origin.box[0] for p in plain] == [0, 64, 128, 192]
    aware = plan([table], [], request(budget=4, tumour_reserve=0.5), default_mpp=2.0)
    assert [p.origin.box[0] for p in aware] == [192, 256, 0, 64]  # 2 of 4 reserved, then the best of the rest
    # a taken box is skipped in both parts; the reserve cannot take more than there is
    left = plan([table], [("a", 192, 0, 32, 32)], request(budget=4, tumour_reserve=1.0), default_mpp=2.0)
    assert [p.origin.box[0] for p in left] == [256, 0, 64, 128]
    capped = plan([table], [], request(budget=4, tumour_reserve=0.5, max_per_slide=3), default_mpp=2.0)
    assert [p.origin.box[0] for p in capped] == [192, 256, 0]
    with pytest.raises(ConfigError, match="tumour_reserve must be a share between 0 and 1"):
        request(tumour_reserve=1.5)
