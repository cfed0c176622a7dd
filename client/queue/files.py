"""The files of one queue item, WS/queue/<item id>/ (image.png, model_mask.png, uncertainty.npy,
later correction.png), and how they are written: durably (temp name, fsync, rename, fsync the
folder), so a row never refers to a missing or partial file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ugafl.common.atomic import atomic_write

FILES_DIR = "queue"
IMAGE_NAME, MODEL_MASK_NAME, UNCERTAINTY_NAME, CORRECTION_NAME = (
    "image.png", "model_mask.png", "uncertainty.npy", "correction.png")


def write_png(path: Path, array: np.ndarray) -> None:
    """`array` (uint8 RGB or a uint8 mask) as a PNG at `path`, durably."""
    _durable_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_npy(path: Path, array: np.ndarray) -> None:
    """`array` as a .npy file at `path` (no pickles), durably."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.save on a path would append ".npy" to the temp name
            np.save(handle, array, allow_pickle=False)

    _durable_write(path, write)


def _durable_write(path: Path, write: Callable[[Path], None]) -> None:
    """Durable: the file, its rename and the folder entry all reach the disk before a row refers to it."""
    atomic_write(path, write, sync_dir=True)
