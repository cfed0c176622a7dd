"""Checks of the commands' paths and options, made before any work starts, so that a mistyped path
is one line naming the option (exit 2) instead of a traceback, an empty workspace made by mistake,
or an error after a whole slide was computed. Each raises UgaflError (main.py prints it)."""

from __future__ import annotations

from pathlib import Path

from ugafl.common.errors import UgaflError


def existing_file(path: Path, option: str, what: str = "file") -> Path:
    """`path` must be a file."""
    if path.is_dir():
        raise UgaflError(f"{option} {path}: is a folder; give a {what}")
    if not path.is_file():
        raise UgaflError(f"{option} {path}: no such {what}")
    return path


def existing_folder(path: Path, option: str, what: str = "folder") -> Path:
    """`path` must be a folder."""
    if path.exists() and not path.is_dir():
        raise UgaflError(f"{option} {path}: is a file; give a {what}")
    if not path.is_dir():
        raise UgaflError(f"{option} {path}: no such {what}")
    return path


def _first_existing(path: Path) -> Path:
    parent = path.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def folder_to_write(path: Path, option: str) -> Path:
    """An output folder: an existing folder, or one that can be made (no file in the way)."""
    if path.exists() and not path.is_dir():
        raise UgaflError(f"{option} {path}: is a file; give a folder to write into")
    above = _first_existing(path)
    if not above.is_dir():
        raise UgaflError(f"{option} {path}: cannot be made, {above} is a file")
    return path


def file_to_write(path: Path, option: str) -> Path:
    """An output file: not a folder, and its folder exists or can be made."""
    if path.is_dir():
        raise UgaflError(f"{option} {path}: is a folder; give a file name")
    above = _first_existing(path.parent)
    if not above.is_dir():
        raise UgaflError(f"{option} {path}: cannot be written, {above} is a file")
    return path


def open_site_queue(workspace: Path, option: str = "--workspace"):
    """The correction queue of an existing site workspace, open; never made. A missing workspace,
    one without queue.db, or a queue.db that is not a queue: one line naming `option`."""
    from ugafl.client.queue.store import CorrectionQueue

    try:
        return CorrectionQueue(workspace, create=False)
    except UgaflError as error:
        raise UgaflError(f"{option} {error}") from None


def site_queue(workspace: Path, option: str = "--workspace") -> Path:
    """`workspace`, once its queue has opened (see open_site_queue); for commands whose library
    function opens it itself."""
    open_site_queue(workspace, option).close()
    return workspace


def checkpoints(paths: tuple[Path, ...], option: str = "--model") -> list[Path]:
    """The checkpoint files named by `option` (a folder stands for the *.pt in it), each one there."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.pt"))
            if not found:
                raise UgaflError(f"{option} {path}: a folder without checkpoints (*.pt)")
            files += found
        else:
            files.append(existing_file(path, option, "checkpoint"))
    return files
