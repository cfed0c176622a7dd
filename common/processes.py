"""Process trees on Linux, read from /proc: a process's descendants (Flower starts SuperExec,
ServerApp and ClientApp processes that outlive a plain terminate of their parent), whether a pid
is alive, and stopping a whole tree by process id: SIGTERM first, SIGKILL for what is left."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pids: Iterable[int]) -> set[int]:
    """The given pids and every process below them."""
    tree, found, todo = _children(), set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(tree.get(pid, []))
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_tree(pids: Iterable[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM the pids and all their descendants, wait up to `grace_s`, then SIGKILL what is left.
    Returns the pids still alive after that (none, unless something is wrong). The caller reaps
    its own children (Popen.wait) so they are not left as zombies."""
    todo = {p for p in descendants(pids) if alive(p)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in sorted(todo):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in todo):
            time.sleep(0.1)
        todo = {p for p in todo if alive(p)}
        if not todo:
            break
    return sorted(todo)


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """This process gets `sig` when the thread that started it dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))


def die_with_parent(sig: int = signal.SIGTERM):
    """A Popen preexec_fn: the child gets `sig` when the process that started it dies, even by
    SIGKILL, so a killed daemon leaves no orphan SuperNode holding its key."""
    return lambda: set_parent_death_signal(sig)


def age_s(pid: int | None = None) -> float:
    """Seconds since process `pid` (default: this one) started, from /proc (10 ms resolution); 0.0 where unknown."""
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
