"""The queue database's tables (WS/queue.db, SQLite) and its schema version: created on first use,
refused when it is newer than this ugafl or not a queue at all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ugafl.client.queue.items import QueueError
from ugafl.common.clock import utc_now

SCHEMA_VERSION = 2  # 2: items.strategy renamed selection (one name for the concept)
DB_NAME = "queue.db"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slide TEXT NOT NULL,
    x INTEGER NOT NULL, y INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    mpp REAL NOT NULL,
    score REAL NOT NULL,
    measure TEXT NOT NULL,
    selection TEXT NOT NULL,
    model_version TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'in_review', 'corrected', 'rejected')),
    reviewer TEXT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    image_path TEXT NOT NULL,
    model_mask_path TEXT NOT NULL,
    uncertainty_path TEXT NOT NULL,
    correction_path TEXT NULL,
    CHECK ((state = 'corrected') = (correction_path IS NOT NULL)),
    UNIQUE (slide, x, y, width, height, model_version)
);
CREATE INDEX items_state_score ON items (state, score DESC);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL REFERENCES items (id),
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT NULL,
    to_state TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_item ON audit (item_id, id);
"""


def init_schema(db: sqlite3.Connection, db_path: Path) -> None:
    """Create the tables in an empty database, or check the version of an existing queue; called
    inside a write transaction on `db` (the file at `db_path`, named in errors)."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    if not has_meta:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='items'").fetchone():
            raise QueueError(f"{db_path}: has an items table but no schema version; not a queue this ugafl wrote")
        for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT our transaction
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", (utc_now(),))
        return
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    try:
        version = int(row[0]) if row else None
    except ValueError:
        version = None
    if version is None:
        raise QueueError(f"{db_path}: meta table has no valid schema_version")
    if version > SCHEMA_VERSION:
        raise QueueError(
            f"{db_path}: queue schema version {version} is newer than this ugafl supports "
            f"({SCHEMA_VERSION}); upgrade ugafl to open it (the file was left untouched)")
    if version < 1:
        raise QueueError(f"{db_path}: queue schema version {version} is older than any this ugafl can migrate")
    if version == 1:  # in the caller's write transaction: all or nothing
        db.execute("ALTER TABLE items RENAME COLUMN strategy TO selection")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
