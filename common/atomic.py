"""Atomic file writes: the whole new file or the old one, never a half-written file. Data go to
a temp file beside the target (a name unique to this process and call), are fsynced, then
renamed over the target; the temp file is removed if anything fails. With `sync_dir` the folder
is fsynced too, so the rename itself survives a power cut (the correction queue needs that)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".part"


def temp_path(path: Path) -> Path:
    """A temp name beside `path`, unique to this process and call."""
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make a rename or new entry in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None], sync_dir: bool = False) -> Path:
    """`write(tmp)` writes the content to the temp path it is given; then fsync and rename."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, sync_dir: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), sync_dir)


def atomic_write_text(path: str | Path, text: str, sync_dir: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), sync_dir)
