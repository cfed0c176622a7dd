"""The correction queue: lifecycle with audit, refusals that change nothing, concurrent claimers,
stale claims, schema versioning, and durability of acknowledged corrections under SIGKILL."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from sigkill import kill_after_acks

from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue, QueueError

PATCH = (24, 32)  # (H, W) of the stored patches: deliberately not square

# The mask a "pathologist" submits for an item: shared verbatim by the SIGKILL child process.
MASK_SRC = """
def expected_mask(item_id, shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = ((yy * 7 + xx * 3 + item_id * 13) % (item_id % 5 + 2)) == 0
    return mask if item_id % 2 else mask.astype(np.uint8) * 255
"""
exec(MASK_SRC)  # defines expected_mask


def patch_arrays(seed: int, shape: tuple[int, int] = PATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    model_mask = rng.random(shape) < 0.4
    uncertainty = rng.random(shape, dtype=np.float32)
    return image, model_mask, uncertainty


def add_item(queue: CorrectionQueue, i: int, *, score: float | None = None, slide: str = "s1.svs",
             model_version: str = "m1") -> int:
    origin = PatchOrigin(slide, (i * 64, 128, 64, 48), 0.5)
    reason = PatchReason(float(i) if score is None else score, "uga", "top_k", model_version, 0)
    return queue.add(NewItem(origin, reason, PatchPixels(*patch_arrays(i))))


def snapshot(ws: Path) -> tuple:
    """Every row of every table, plus every file under the workspace's queue folder with its hash."""
    with sqlite3.connect(ws / "queue.db") as db:
        rows = tuple(tuple(db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()) for t in ("meta", "items", "audit"))
    files = tuple(sorted((p.relative_to(ws).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                         for p in (ws / "queue").rglob("*") if p.is_file()))
    return rows, files


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "site"


def test_lifecycle_pending_review_corrected_with_audit(ws: Path) -> None:
    with CorrectionQueue(ws) as q:
        low = add_item(q, 1, score=0.2)
        high = add_item(q, 2, score=0.9)
        assert q.counts() == {"pending": 2, "in_review": 0, "corrected": 0, "rejected": 0}
        item = q.get(high)
        assert item.state == "pending" and item.reviewer is None and item.box == (128, 128, 64, 48)
        assert item.image_path.is_absolute() and item.image_path.is_file() and item.correction_path is None
        image, model_mask, unc = patch_arrays(2)
        assert np.array_equal(q.load_image(high), image)
        assert np.array_equal(q.load_model_mask(high), model_mask)
        assert np.array_equal(q.load_uncertainty(high), unc) and q.load_uncertainty(high).dtype == np.float32

        claimed = q.next_pending("dr_a")
        assert claimed is not None and claimed.id == high  # highest score first
        assert claimed.state == "in_review" and claimed.reviewer == "dr_a"

        correction = expected_mask(high, PATCH)
        q.submit_correction(high, correction, "dr_a")
        done = q.get(high)
        assert done.state == "corrected" and done.reviewer == "dr_a" and done.correction_path.is_file()
        assert done.correction_path.parent == ws.resolve() / "queue" / str(high)
        stored = q.load_correction(high)
        assert stored.dtype == bool and np.array_equal(stored, correction > 0)

        hist = q.history(high)
        assert [(h.action, h.from_state, h.to_state, h.who) for h in hist] == [
            ("add", None, "pending", "selection"),
            ("claim", "pending", "in_review", "dr_a"),
            ("correct", "in_review", "corrected", "dr_a"),
        ]
        stamps = [datetime.fromisoformat(h.at) for h in hist]
        assert all(s.utcoffset().total_seconds() == 0 for s in stamps) and stamps == sorted(stamps)
        assert all("." in h.at for h in hist)  # microseconds
        assert hist[2].detail["foreground_px"] == int((correction > 0).sum())
        assert q.counts() == {"pending": 1, "in_review": 0, "corrected": 1, "rejected": 0}
        assert [i.id for i in q.list(state="pending")] == [low]
        assert [i.id for i in q.list(slide="s1.svs")] == [low, high]
        assert q.list(slide="other") == []

        q.reject(low, "dr_b", "out of focus")
        assert q.get(low).state == "rejected"
        assert q.history(low)[-1].detail["reason"] == "out of focus"
        assert sorted(q.taken_boxes()) == [("s1.svs", 64, 128, 64, 48), ("s1.svs", 128, 128, 64, 48)]
        assert q.sweep_orphans() == []

    with CorrectionQueue(ws) as again:  # everything persisted
        assert np.array_equal(again.load_correction(high), correction > 0)
        with sqlite3.connect(ws / "queue.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_release_returns_claim_and_submit_works_from_pending(ws: Path) -> None:
    with CorrectionQueue(ws) as q:
        a = add_item(q, 1)
        assert q.next_pending("dr_a").id == a
        q.release(a, "dr_a")
        assert q.get(a).state == "pending" and q.get(a).reviewer is None
        with pytest.raises(QueueError, match="not in_review"):
            q.release(a, "dr_a")
        q.submit_correction(a, np.zeros(PATCH, bool), "dr_b")  # straight from pending
        assert q.get(a).state == "corrected"
        assert q.next_pending("dr_a") is None


def refusal_cases():
    """(name, prepare(q, item_id) -> None, call(q, item_id), message regex)."""
    good = expected_mask(1, PATCH)
    return [
        ("mask wrong size", None, lambda q, i: q.submit_correction(i, np.zeros((PATCH[0], PATCH[1] + 1), bool), "dr"),
         r"mask is 33x24, patch is 32x24"),
        ("mask value 2", None, lambda q, i: q.submit_correction(i, np.where(good > 0, 2, 0).astype(np.uint8), "dr"),
         r"values 2\b"),
        ("mask value 128", None, lambda q, i: q.submit_correction(i, np.where(good > 0, 128, 0).astype(np.uint8), "dr"),
         r"values 128"),
        ("mask mixing 1 and 255", None,
         lambda q, i: q.submit_correction(i, np.array([[0, 1] * 16, [255, 0] * 16] * 12, np.uint8), "dr"),
         r"0/1 or 0/255"),
        ("float mask", None, lambda q, i: q.submit_correction(i, good.astype(np.float32), "dr"), r"dtype float32"),
        ("unknown item", None, lambda q, i: q.submit_correction(i + 999, good, "dr"), r"no item \d+"),
        ("already corrected", lambda q, i: q.submit_correction(i, good, "dr_a"),
         lambda q, i: q.submit_correction(i, np.zeros(PATCH, bool), "dr_b"), r"already corrected by dr_a"),
        ("already rejected", lambda q, i: q.reject(i, "dr_a", "artefact"),
         lambda q, i: q.submit_correction(i, good, "dr_b"), r"already rejected"),
        ("reject corrected", lambda q, i: q.submit_correction(i, good, "dr_a"),
         lambda q, i: q.reject(i, "dr_b", "why"), r"already corrected"),
        ("duplicate add", None, lambda q, i: add_item(q, 1, score=5.0), r"already queued for model m1 as item"),
    ]


@pytest.mark.parametrize("name, prepare, call, message", refusal_cases(), ids=[c[0] for c in refusal_cases()])
def test_refusal_changes_nothing(ws: Path, name, prepare, call, message) -> None:
    with CorrectionQueue(ws) as q:
        item_id = add_item(q, 1)
        add_item(q, 2)
        q.next_pending("dr_a")
        if prepare is not None:
            prepare(q, item_id)
        before = snapshot(ws)
        with pytest.raises(QueueError, match=message):
            call(q, item_id)
        assert snapshot(ws) == before
        assert q.sweep_orphans() == []


def test_add_refusals_name_the_field(ws: Path) -> None:
    with CorrectionQueue(ws) as q:
        image, mask, unc = patch_arrays(0)
        origin, reason = PatchOrigin("s", (0, 0, 64, 48), 0.5), PatchReason(1.0, "uga", "top_k", "m1", 0)

        def add(*pixels: np.ndarray) -> int:
            return q.add(NewItem(origin, reason, PatchPixels(*pixels)))

        before = snapshot(ws)
        with pytest.raises(QueueError, match="model_mask is 31x24, image is 32x24"):
            add(image, mask[:, :31], unc)
        with pytest.raises(QueueError, match="uncertainty is 32x23, image is 32x24"):
            add(image, mask, unc[:23])
        with pytest.raises(QueueError, match="image must be uint8"):
            add(image.astype(np.float32), mask, unc)
        with pytest.raises(QueueError, match="uncertainty has NaN"):
            add(image, mask, np.full(PATCH, np.nan))
        for bad_origin, message in ((PatchOrigin("s", (0, 0, 0, 48), 0.5), "width, height > 0"),
                                    (PatchOrigin("s", (0, 0, 64.5, 48), 0.5), "box must be four integers"),
                                    (PatchOrigin("", (0, 0, 64, 48), 0.5), "slide must be a non-empty string"),
                                    (PatchOrigin("s", (0, 0, 64, 48), 0.0), "mpp must be a positive number")):
            with pytest.raises(QueueError, match=message):
                q.add(NewItem(bad_origin, reason, PatchPixels(image, mask, unc)))
        with pytest.raises(QueueError, match="selection must be a non-empty string"):
            q.add(NewItem(origin, PatchReason(1.0, "uga", " ", "m1", 0), PatchPixels(image, mask, unc)))
        assert snapshot(ws) == before
        # same box, another model version: allowed
        add(image, mask, unc)
        q.add(NewItem(origin, PatchReason(1.0, "uga", "top_k", "m2", 1), PatchPixels(image, mask, unc)))
        assert q.taken_boxes() == [("s", 0, 0, 64, 48)]


def test_two_queue_objects_never_claim_the_same_item(ws: Path) -> None:
    with CorrectionQueue(ws) as q1, CorrectionQueue(ws) as q2:
        ids = [add_item(q1, i) for i in range(10)]
        got = []
        for turn in range(12):
            item = (q1 if turn % 2 else q2).next_pending(f"dr_{turn % 2}")
            if item is not None:
                got.append(item.id)
        assert sorted(got) == sorted(ids) and len(set(got)) == len(got)
        assert got == sorted(ids, reverse=True)  # score order across both objects


@pytest.mark.parametrize("shared", [False, True], ids=["own-connection", "shared-object"])
def test_threads_never_claim_the_same_item(ws: Path, shared: bool) -> None:
    with CorrectionQueue(ws) as q:
        ids = [add_item(q, i) for i in range(40)]
        claims: dict[str, list[int]] = {}
        start = threading.Barrier(4)
        errors = []

        def worker(name: str) -> None:
            try:
                mine = q if shared else CorrectionQueue(ws)
                start.wait()
                out = claims.setdefault(name, [])
                while (item := mine.next_pending(name)) is not None:
                    out.append(item.id)
                if not shared:
                    mine.close()
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        got = [i for c in claims.values() for i in c]
        assert sorted(got) == sorted(ids)  # each exactly once
        for name, c in claims.items():
            assert all(q.get(i).reviewer == name for i in c)


def test_reset_stale_returns_old_claims(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ugafl.client.queue.store as store

    two_hours_ago = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat(timespec="microseconds")
    with CorrectionQueue(ws) as q:
        for i in range(3):
            add_item(q, i)
        with monkeypatch.context() as m:  # the first claim is stamped two hours ago, not slept for
            m.setattr(store, "utc_now", lambda: two_hours_ago)
            first = q.next_pending("dr_a")
        second = q.next_pending("dr_b")  # claimed now
        assert q.reset_stale(3 * 3600, "janitor") == 0
        assert q.reset_stale(3600, "janitor") == 1  # only the older claim
        assert q.get(first.id).state == "pending" and q.get(first.id).reviewer is None
        assert q.get(second.id).state == "in_review"
        last = q.history(first.id)[-1]
        assert (last.action, last.from_state, last.to_state, last.who) == ("reset_stale", "in_review", "pending", "janitor")
        assert last.detail["previous_reviewer"] == "dr_a" and last.detail["claimed_at"] == two_hours_ago
        assert q.reset_stale(0, "janitor") == 1
        assert q.counts()["pending"] == 3


def test_newer_schema_is_refused(ws: Path) -> None:
    with CorrectionQueue(ws) as q:
        add_item(q, 1)
    with sqlite3.connect(ws / "queue.db") as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    before = snapshot(ws)
    with pytest.raises(QueueError, match=r"schema version 99 is newer than this ugafl supports \(2\); upgrade"):
        CorrectionQueue(ws)
    assert snapshot(ws) == before


def test_a_version_1_queue_is_migrated_with_its_items(ws: Path) -> None:
    """Version 1 named the selection strategy 'strategy'; opening such a queue renames the column
    (in the same transaction as the version) and keeps every item."""
    with CorrectionQueue(ws) as q:
        item = add_item(q, 1)
    with sqlite3.connect(ws / "queue.db") as db:  # make it the version-1 file an older ugafl wrote
        db.execute("ALTER TABLE items RENAME COLUMN selection TO strategy")
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    with CorrectionQueue(ws) as q:
        assert q.get(item).selection == "top_k" and [i.id for i in q.list()] == [item]
    with sqlite3.connect(ws / "queue.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
        assert "selection" in [row[1] for row in db.execute("PRAGMA table_info(items)")]


def test_sweep_orphans_removes_unreferenced_files_only(ws: Path) -> None:
    with CorrectionQueue(ws) as q:
        a = add_item(q, 1)
        keep = sorted(p for p in (ws / "queue").rglob("*") if p.is_file())
        (ws / "queue" / str(a) / "correction.png.123.abcd.part").write_bytes(b"half")
        (ws / "queue" / str(a) / "correction.png").write_bytes(b"uncommitted")
        (ws / "queue" / "77").mkdir()
        (ws / "queue" / "77" / "image.png").write_bytes(b"x")
        removed = q.sweep_orphans()
        assert len(removed) == 3
        assert sorted(p for p in (ws / "queue").rglob("*") if p.is_file()) == keep
        assert not (ws / "queue" / "77").exists()
        assert q.get(a).state == "pending"


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from ugafl.client.queue.store import CorrectionQueue
    {mask_src}
    q = CorrectionQueue(sys.argv[1])
    print("ready", flush=True)
    while (item := q.next_pending("child")) is not None:
        q.submit_correction(item.id, expected_mask(item.id, {shape}), "child")
        print(item.id, flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acknowledged_corrections_survive_sigkill(ws: Path, seed: int) -> None:
    rng_seed = seed * 7919 + int(time.time())  # another kill point each run (not a timing)...
    print(f"kill-point seed {rng_seed}")  # ...shown on failure, so that run can be replayed
    rng = random.Random(rng_seed)
    n_items = 150
    with CorrectionQueue(ws) as q:
        for i in range(n_items):
            add_item(q, i)
    kill_after = rng.randint(20, 80)
    script = CHILD.format(mask_src=MASK_SRC, shape=PATCH)
    acked = [int(line) for line in kill_after_acks([sys.executable, "-c", script, str(ws)], kill_after, rng, 0.004)]
    assert len(acked) >= kill_after

    with sqlite3.connect(ws / "queue.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with CorrectionQueue(ws) as q:
        for item_id in acked:
            item = q.get(item_id)
            assert item.state == "corrected", item
            assert np.array_equal(q.load_correction(item_id), expected_mask(item_id, PATCH) > 0)
        items = q.list()
        assert len(items) == n_items
        for item in items:  # no inconsistent row, acknowledged or not
            assert item.image_path.is_file() and item.model_mask_path.is_file() and item.uncertainty_path.is_file()
            if item.state == "corrected":
                assert np.array_equal(q.load_correction(item.id), expected_mask(item.id, PATCH) > 0)
                assert q.history(item.id)[-1].action == "correct"
            else:
                assert item.correction_path is None and item.state in ("pending", "in_review")
        assert sum(i.state == "in_review" for i in items) <= 1
        q.sweep_orphans()
        referenced = {p for i in q.list() for p in (i.image_path, i.model_mask_path, i.uncertainty_path,
                                                    i.correction_path) if p is not None}
        on_disk = {p for p in (ws.resolve() / "queue").rglob("*") if p.is_file()}
        assert on_disk == referenced
        assert q.reset_stale(0, "janitor") == sum(i.state == "in_review" for i in items)
        assert q.counts()["in_review"] == 0
