"""The site's persistent correction queue: WS/queue.db (SQLite, tables in `schema`) plus one folder
of files per item, WS/queue/<item id>/ (written by `files`). What goes in is a `NewItem`
(`new_item`), what comes out an `Item` or `AuditEntry` (`items`).

Durability rules (a pathologist's acknowledged correction is never lost):
- queue.db runs in WAL mode with synchronous=FULL and foreign keys on; every change is one
  transaction, started with BEGIN IMMEDIATE so two writers (objects, threads or processes) are
  serialised and two claimers never get the same item.
- Files are written first (temp name in the item folder, fsync, rename, fsync the folder) and only
  then is the row that references them committed. The write lock is held while the files are
  written, so a crash leaves at most an orphan file (never a row pointing at a missing or partial
  file), and sweep_orphans() (which takes the same lock) removes such files safely.
- Every request is validated before anything is written; a refused request changes nothing.
- Every state change writes an audit row: who, when (UTC, microseconds), from/to, detail JSON.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from ugafl.client.queue.files import (
    CORRECTION_NAME,
    FILES_DIR,
    IMAGE_NAME,
    MODEL_MASK_NAME,
    UNCERTAINTY_NAME,
    write_npy,
    write_png,
)
from ugafl.client.queue.items import (
    STATES,
    AuditEntry,
    Item,
    QueueError,
    check_binary_mask,
    check_open,
    need_str,
    need_who,
    size_text,
)
from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason, check_new_item
from ugafl.client.queue.schema import DB_NAME, SCHEMA_VERSION, init_schema
from ugafl.common.atomic import fsync_dir
from ugafl.common.clock import utc_now
from ugafl.common.log import get_logger

__all__ = ["CORRECTION_NAME", "DB_NAME", "FILES_DIR", "IMAGE_NAME", "MODEL_MASK_NAME", "SCHEMA_VERSION", "STATES",
           "UNCERTAINTY_NAME", "AuditEntry", "CorrectionQueue", "Item", "NewItem", "PatchOrigin", "PatchPixels",
           "PatchReason", "QueueError"]

log = get_logger("queue")


def check_workspace(workspace: Path, create: bool) -> None:
    """QueueError naming the workspace when it cannot hold a queue: a file (or under one), or,
    without `create`, a folder that is missing or has no queue.db."""
    db = workspace / DB_NAME
    if workspace.exists() and not workspace.is_dir():
        raise QueueError(f"{workspace}: is a file, not a site workspace folder")
    if not create:
        if not workspace.is_dir():
            raise QueueError(f"{workspace}: no correction queue there: no such folder (nothing was created)")
        if not db.exists():
            raise QueueError(f"{workspace}: no correction queue there ({DB_NAME}); is it a site workspace?")
        if not db.is_file():
            raise QueueError(f"{db}: is not a file; a site workspace's queue is a SQLite file")
        return
    parent = workspace
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise QueueError(f"{workspace}: cannot be made: {parent} is a file")
    if db.exists() and not db.is_file():
        raise QueueError(f"{db}: is not a file; a site workspace's queue is a SQLite file")


class CorrectionQueue:
    """The correction queue of the site workspace `workspace`: created on first use, or with
    `create=False` only opened (a command that reads a workspace never makes one; a missing
    workspace or queue.db is a QueueError naming it).

    Safe to share between threads (one lock per object) and to open from several objects or
    processes at once (SQLite locking with BEGIN IMMEDIATE)."""

    def __init__(self, workspace: str | Path, *, busy_timeout_s: float = 30.0, create: bool = True):
        self.workspace = Path(workspace).resolve()
        self.db_path = self.workspace / DB_NAME
        self.files_dir = self.workspace / FILES_DIR
        check_workspace(self.workspace, create)
        if create:
            self.workspace.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.db_path, timeout=busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as error:
            raise QueueError(f"{self.db_path}: cannot open the queue database ({error})") from None
        try:
            self._conn.row_factory = sqlite3.Row
            if not create and not self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
                raise QueueError(f"{self.db_path}: holds no correction queue (no tables); is it a site workspace?")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueError(f"{self.db_path}: cannot switch to WAL journal mode (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._init_schema()
            if create:
                self.files_dir.mkdir(exist_ok=True)
        except sqlite3.DatabaseError as error:  # a file that is not SQLite, or a damaged one
            self._conn.close()
            raise QueueError(f"{self.db_path}: not a readable queue database ({error}); is it a site workspace's "
                             "queue.db?") from None
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def __enter__(self) -> CorrectionQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the database write lock is taken now)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._write() as db:
            init_schema(db, self.db_path)

    @staticmethod
    def _audit(db: sqlite3.Connection, item_id: int, at: str, who: str, action: str,
               from_state: str | None, to_state: str, detail: dict) -> None:
        db.execute(
            "INSERT INTO audit (item_id, at, who, action, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (item_id, at, who, action, from_state, to_state, json.dumps(detail, sort_keys=True)))

    def _row(self, db: sqlite3.Connection, item_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise QueueError(f"no item {item_id}")
        return row

    def _item(self, row: sqlite3.Row) -> Item:
        d = dict(row)
        for key in ("image_path", "model_mask_path", "uncertainty_path", "correction_path"):
            d[key] = self.workspace / d[key] if d[key] is not None else None
        return Item(**d)

    def _item_dir(self, item_id: int) -> Path:
        return self.files_dir / str(item_id)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.workspace).as_posix()

    # ------------------------------------------------------------------ adding

    def add(self, item: NewItem, who: str = "selection") -> int:
        """Queue one proposed patch; returns its id. Refuses (QueueError, nothing written) a malformed
        item and a box already queued for this model version."""
        checked = check_new_item(item)
        who = need_who(who)
        slide, reason = item.origin.slide, item.reason
        x, y, w, h = checked.box
        now = utc_now()
        with self._write() as db:
            dup = db.execute(
                "SELECT id, state FROM items WHERE slide=? AND x=? AND y=? AND width=? AND height=? AND model_version=?",
                (slide, x, y, w, h, reason.model_version)).fetchone()
            if dup is not None:
                raise QueueError(f"{slide} box ({x}, {y}, {w}, {h}) is already queued for model {reason.model_version} "
                                 f"as item {dup['id']} ({dup['state']})")
            item_id = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sqlite_sequence WHERE name='items'").fetchone()[0]
            item_dir = self._item_dir(item_id)
            paths = {name: item_dir / name for name in (IMAGE_NAME, MODEL_MASK_NAME, UNCERTAINTY_NAME)}
            # Files first (the write lock is held, so no other writer or sweep runs meanwhile) ...
            item_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.files_dir)
            write_png(paths[IMAGE_NAME], checked.image)
            write_png(paths[MODEL_MASK_NAME], checked.model_mask.astype(np.uint8))
            write_npy(paths[UNCERTAINTY_NAME], checked.uncertainty)
            # ... then the row that references them.
            db.execute(
                "INSERT INTO items (id, slide, x, y, width, height, mpp, score, measure, selection, model_version, round,"
                " state, reviewer, created_at, updated_at, image_path, model_mask_path, uncertainty_path, correction_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, ?, ?, ?, ?, ?, NULL)",
                (item_id, slide, x, y, w, h, float(item.origin.mpp), float(reason.score), reason.measure,
                 reason.selection, reason.model_version, int(reason.round), now, now,
                 self._rel(paths[IMAGE_NAME]), self._rel(paths[MODEL_MASK_NAME]), self._rel(paths[UNCERTAINTY_NAME])))
            self._audit(db, item_id, now, who, "add", None, "pending",
                        {"score": float(reason.score), "measure": reason.measure, "selection": reason.selection,
                         "model_version": reason.model_version, "round": int(reason.round)})
        log.debug("queued item %d: %s %s score %.4g", item_id, slide, (x, y, w, h), reason.score)
        return int(item_id)

    # ------------------------------------------------------------------ reviewing

    def next_pending(self, who: str, skip: Iterable[int] = ()) -> Item | None:
        """Claim the highest-score pending item for `who` (pending -> in_review), passing over the ids
        in `skip` (items this reviewer skipped); None when none is left."""
        who = need_who(who)
        skip_ids = sorted({int(i) for i in skip})
        not_in = f" AND id NOT IN ({', '.join('?' * len(skip_ids))})" if skip_ids else ""
        with self._write() as db:
            row = db.execute(f"SELECT id FROM items WHERE state='pending'{not_in} ORDER BY score DESC, id ASC LIMIT 1",
                             skip_ids).fetchone()
            if row is None:
                return None
            now = utc_now()
            db.execute("UPDATE items SET state='in_review', reviewer=?, updated_at=? WHERE id=?", (who, now, row["id"]))
            self._audit(db, row["id"], now, who, "claim", "pending", "in_review", {})
            return self._item(self._row(db, row["id"]))

    def peek_pending(self, skip: Iterable[int] = ()) -> Item | None:
        """The highest-score pending item not in `skip`, without claiming it; None when none is left."""
        skip_ids = sorted({int(i) for i in skip})
        not_in = f" AND id NOT IN ({', '.join('?' * len(skip_ids))})" if skip_ids else ""
        with self._lock:
            row = self._conn.execute(f"SELECT * FROM items WHERE state='pending'{not_in} ORDER BY score DESC, id ASC "
                                     f"LIMIT 1", skip_ids).fetchone()
            return None if row is None else self._item(row)

    def claim(self, item_id: int, who: str) -> Item:
        """`who` starts correcting the item (pending -> in_review); a no-op when `who` holds it already."""
        who = need_who(who)
        with self._write() as db:
            item = self._item(self._row(db, item_id))
            if item.state == "in_review" and item.reviewer == who:
                return item
            if item.state != "pending":
                by = f" by {item.reviewer}" if item.reviewer else ""
                raise QueueError(f"item {item.id} is {item.state}{by}; it cannot be claimed")
            now = utc_now()
            db.execute("UPDATE items SET state='in_review', reviewer=?, updated_at=? WHERE id=?", (who, now, item.id))
            self._audit(db, item.id, now, who, "claim", "pending", "in_review", {})
            return self._item(self._row(db, item.id))

    def submit_correction(self, item_id: int, mask: np.ndarray, who: str) -> None:
        """Store `who`'s corrected mask for the item (pending/in_review -> corrected). The mask must
        have the patch's shape and hold only 0/1 or 0/255 (bool or uint8). When this returns the
        correction is on disk and committed."""
        self.submit_corrections({item_id: mask}, who)

    def submit_corrections(self, masks: dict[int, np.ndarray], who: str) -> None:
        """`submit_correction` for several items in one transaction: all are stored or none (one
        imported file never lands half). Every mask is checked before anything is written."""
        who = need_who(who)
        if not masks:
            raise QueueError("no corrections to submit")
        with self._lock:
            checked: dict[int, np.ndarray] = {}
            for item_id, mask in masks.items():  # validate everything before writing anything
                mask = np.asarray(mask)
                item = self.get(item_id)
                check_open(item, "correct")
                with Image.open(item.image_path) as im:
                    patch_w, patch_h = im.size
                if mask.ndim != 2 or mask.shape != (patch_h, patch_w):
                    got = size_text(mask.shape) if mask.ndim == 2 else f"shape {mask.shape}"
                    raise QueueError(f"mask is {got}, patch is {patch_w}x{patch_h} (width x height) for item {item_id}")
                checked[item.id] = check_binary_mask("mask", mask)
            with self._write() as db:
                now = utc_now()
                for item_id, binary in checked.items():
                    current = self._item(self._row(db, item_id))  # re-read under the write lock
                    check_open(current, "correct")
                    path = self._item_dir(item_id) / CORRECTION_NAME
                    write_png(path, binary.astype(np.uint8))
                    db.execute("UPDATE items SET state='corrected', reviewer=?, updated_at=?, correction_path=? WHERE id=?",
                               (who, now, self._rel(path), item_id))
                    self._audit(db, item_id, now, who, "correct", current.state, "corrected",
                                {"foreground_px": int(binary.sum()), "previous_reviewer": current.reviewer})
        log.info("item(s) %s corrected by %s", ", ".join(map(str, checked)), who)

    def reject(self, item_id: int, who: str, reason: str) -> None:
        """`who` declines to annotate the item (pending/in_review -> rejected), with a reason."""
        who = need_who(who)
        reason = need_str("reason", reason)
        with self._write() as db:
            item = self._item(self._row(db, item_id))
            check_open(item, "reject")
            now = utc_now()
            db.execute("UPDATE items SET state='rejected', reviewer=?, updated_at=? WHERE id=?", (who, now, item.id))
            self._audit(db, item.id, now, who, "reject", item.state, "rejected",
                        {"reason": reason, "previous_reviewer": item.reviewer})

    def release(self, item_id: int, who: str) -> None:
        """Give a claimed item back (in_review -> pending)."""
        who = need_who(who)
        with self._write() as db:
            item = self._item(self._row(db, item_id))
            if item.state != "in_review":
                raise QueueError(f"item {item.id} is {item.state}, not in_review; nothing to release")
            now = utc_now()
            db.execute("UPDATE items SET state='pending', reviewer=NULL, updated_at=? WHERE id=?", (now, item.id))
            self._audit(db, item.id, now, who, "release", "in_review", "pending", {"previous_reviewer": item.reviewer})

    def reset_stale(self, older_than_s: float, who: str) -> int:
        """Return in_review items untouched for more than `older_than_s` seconds to pending; the count."""
        who = need_who(who)
        if not (isinstance(older_than_s, (int, float)) and older_than_s >= 0):
            raise QueueError(f"older_than_s must be a non-negative number, got {older_than_s!r}")
        with self._write() as db:
            now_dt = datetime.now(timezone.utc)
            cutoff = (now_dt - timedelta(seconds=older_than_s)).isoformat(timespec="microseconds")
            now = now_dt.isoformat(timespec="microseconds")
            rows = db.execute("SELECT id, reviewer, updated_at FROM items WHERE state='in_review' AND updated_at < ?",
                              (cutoff,)).fetchall()
            for row in rows:
                db.execute("UPDATE items SET state='pending', reviewer=NULL, updated_at=? WHERE id=?", (now, row["id"]))
                self._audit(db, row["id"], now, who, "reset_stale", "in_review", "pending",
                            {"previous_reviewer": row["reviewer"], "claimed_at": row["updated_at"],
                             "older_than_s": older_than_s})
        if rows:
            log.info("returned %d stale in_review item(s) to pending", len(rows))
        return len(rows)

    # ------------------------------------------------------------------ reading

    def get(self, item_id: int) -> Item:
        with self._lock:
            return self._item(self._row(self._conn, item_id))

    def list(self, state: str | None = None, slide: str | None = None) -> list[Item]:
        """Items, optionally of one state and/or one slide, by id."""
        if state is not None and state not in STATES:
            raise QueueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        sql, args = "SELECT * FROM items WHERE 1=1", []
        if state is not None:
            sql, args = sql + " AND state=?", args + [state]
        if slide is not None:
            sql, args = sql + " AND slide=?", args + [slide]
        with self._lock:
            return [self._item(r) for r in self._conn.execute(sql + " ORDER BY id", args).fetchall()]

    def counts(self) -> dict[str, int]:
        """Items per state (every state present, 0 when none)."""
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    def has_slide(self, slide: str) -> bool:
        """Whether any item comes from `slide`."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM items WHERE slide = ? LIMIT 1", (slide,)).fetchone() is not None

    def decided_by(self) -> dict[str, dict[str, int]]:
        """Who decided what: per reviewer, how many items they corrected and rejected."""
        with self._lock:
            rows = self._conn.execute("SELECT reviewer, state, COUNT(*) FROM items WHERE state IN ('corrected', 'rejected')"
                                      " GROUP BY reviewer, state").fetchall()
        out: dict[str, dict[str, int]] = {}
        for reviewer, state, n in rows:
            out.setdefault(reviewer or "", {"corrected": 0, "rejected": 0})[state] = n
        return out

    def history(self, item_id: int) -> list[AuditEntry]:
        with self._lock:
            self._row(self._conn, item_id)
            rows = self._conn.execute("SELECT * FROM audit WHERE item_id=? ORDER BY id", (int(item_id),)).fetchall()
        return [AuditEntry(**{**dict(r), "detail": json.loads(r["detail"])}) for r in rows]

    def taken_boxes(self) -> list[tuple[str, int, int, int, int]]:
        """(slide, x, y, w, h) of every queued item in any state, for selection to exclude."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT slide, x, y, width, height FROM items ORDER BY slide, y, x").fetchall()
        return [tuple(r) for r in rows]

    def load_image(self, item_id: int) -> np.ndarray:
        """uint8 (H, W, 3)."""
        with Image.open(self.get(item_id).image_path) as im:
            return np.asarray(im.convert("RGB"))

    def load_model_mask(self, item_id: int) -> np.ndarray:
        """bool (H, W)."""
        with Image.open(self.get(item_id).model_mask_path) as im:
            return np.asarray(im) > 0

    def load_uncertainty(self, item_id: int) -> np.ndarray:
        """float32 (H, W)."""
        return np.load(self.get(item_id).uncertainty_path, allow_pickle=False)

    def load_correction(self, item_id: int) -> np.ndarray:
        """bool (H, W) as submitted."""
        item = self.get(item_id)
        if item.correction_path is None:
            raise QueueError(f"item {item.id} has no correction ({item.state})")
        with Image.open(item.correction_path) as im:
            return np.asarray(im) > 0

    # ------------------------------------------------------------------ housekeeping

    def sweep_orphans(self) -> list[Path]:
        """Delete files under WS/queue/ that no row references (left by a crash between writing a
        file and committing its row, and temp files); returns what was deleted. Holds the write
        lock, so it never races a writer that is between its file and its commit."""
        removed: list[Path] = []
        with self._write() as db:
            keep = set()
            for row in db.execute("SELECT image_path, model_mask_path, uncertainty_path, correction_path FROM items"):
                keep.update(self.workspace / p for p in row if p is not None)
            if not self.files_dir.is_dir():
                return removed
            for dirpath, dirnames, filenames in os.walk(self.files_dir, topdown=False):
                here = Path(dirpath)
                for name in filenames:
                    path = here / name
                    if path not in keep:
                        path.unlink()
                        removed.append(path)
                if here != self.files_dir and not any(here.iterdir()):
                    here.rmdir()
            if removed:
                fsync_dir(self.files_dir)
        if removed:
            log.info("swept %d orphan file(s) from %s", len(removed), self.files_dir)
        return removed
