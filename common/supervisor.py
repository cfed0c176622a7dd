"""A small process supervisor for the coordinator's and the hospital's daemons: it starts child
programs, copies their output line by line into the daemon's log (colour codes stripped, each
line prefixed with the child's name), restarts a child that exits (waiting longer after each quick
failure, up to a minute), and on SIGTERM/SIGINT stops every child with its whole process tree.

Children get SIGTERM if the daemon itself dies (even by SIGKILL), so a killed daemon leaves no
SuperNode or SuperLink behind. No Flower import: children are plain commands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ugafl.common.atomic import atomic_write_text
from ugafl.common.processes import alive, command_line, descendants, die_with_parent, stop_tree

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STOP = "stop"  # a line hook returns this to stop restarting the child (and the daemon)


@dataclass
class Child:
    """One supervised program. `on_line(line)` sees every output line; it may return STOP
    (give up: a fault no restart will mend) or a number of seconds to wait before the next start."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None
    on_line: Callable[[str], object] | None = None
    on_start: Callable[[], None] | None = None
    death_signal: int = signal.SIGTERM  # what the child gets if the daemon dies without stopping it
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    wait_s: float | None = None  # set by on_line: the next start waits this long
    stopped: bool = False  # on_line said STOP
    last_exit: int | None = None
    _reader: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    """Run children until `stop()` (or SIGTERM/SIGINT after `install_signal_handlers`)."""

    def __init__(self, log: logging.Logger, children: list[Child], max_backoff_s: float = 60.0,
                 poll_s: float = 0.5, pid_file: Path | None = None):
        self.log, self.children, self.max_backoff_s, self.poll_s = log, children, max_backoff_s, poll_s
        self.pid_file = pid_file  # the children's process trees, so a successor can stop what a killed daemon left
        self._stopping = threading.Event()
        self._last_record = 0.0
        self.fatal: str | None = None  # why the daemon gave up, if it did

    def _record_tree(self) -> None:
        if self.pid_file is None or time.monotonic() - self._last_record < 2.0:
            return
        self._last_record = time.monotonic()
        pids = descendants([c.proc.pid for c in self.children if c.proc is not None])
        atomic_write_text(self.pid_file, json.dumps({str(p): command_line(p) for p in sorted(pids)}))

    def stop_leftovers(self) -> None:
        """Stop the processes a previous daemon (killed, so it could not stop them) left running:
        those in the pid file that still run the same command."""
        if self.pid_file is None or not self.pid_file.is_file():
            return
        try:
            recorded = json.loads(self.pid_file.read_text())
        except json.JSONDecodeError:
            recorded = {}
        left = [int(p) for p, cmd in recorded.items() if cmd and alive(int(p)) and command_line(int(p)) == cmd]
        if left:
            self.log.warning("stopping %d process(es) a previous daemon left running: %s", len(left), left)
            stop_tree(left)
        self.pid_file.unlink(missing_ok=True)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._request_stop(signal.Signals(signum).name))

    def _request_stop(self, why: str) -> None:
        if not self._stopping.is_set():
            self.log.info("%s received: stopping", why)
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _start(self, child: Child) -> None:
        if child.on_start is not None:
            child.on_start()
        child.wait_s = None
        child.proc = subprocess.Popen(child.argv, env=child.env, cwd=child.cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                                      bufsize=1, preexec_fn=die_with_parent(child.death_signal))
        child.started_at = time.monotonic()
        self.log.info("%s started (pid %d)%s", child.name, child.proc.pid,
                      f", restart {child.restarts}" if child.restarts else "")
        child._reader = threading.Thread(target=self._read, args=(child, child.proc), daemon=True)
        child._reader.start()

    def _read(self, child: Child, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = _ANSI.sub("", raw.rstrip("\n")).rstrip()
            if not line:
                continue
            self.log.info("%s | %s", child.name, line)
            if child.on_line is not None:
                verdict = child.on_line(line)
                if verdict == STOP:
                    child.stopped = True
                elif isinstance(verdict, (int, float)):
                    child.wait_s = float(verdict)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if now >= child.next_start and not child.stopped:
                self._start(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        if child._reader is not None:
            child._reader.join(timeout=5)  # every line is read before deciding
        child.last_exit, child.proc = code, None
        if child.stopped:
            self.fatal = self.fatal or f"{child.name} cannot run (see the lines above); not restarting it"
            self.log.error("%s", self.fatal)
            self.stop()
            return
        quick = now - child.started_at < 30
        child.restarts += 1
        backoff = child.wait_s if child.wait_s is not None else (
            min(self.max_backoff_s, 2.0 ** min(child.restarts, 6)) if quick else 1.0)
        child.next_start = now + backoff
        self.log.warning("%s exited with code %d; restarting in %.0f s", child.name, code, backoff)

    def run(self, on_tick: Callable[[], None] | None = None) -> int:
        """Supervise until stopped; then stop every child's process tree. 0, or 2 if gave up."""
        self.stop_leftovers()
        try:
            while not self.stopping:
                for child in self.children:
                    self._check(child)
                    if self.stopping:
                        break
                self._record_tree()
                if on_tick is not None:
                    on_tick()
                self._stopping.wait(self.poll_s)
        finally:
            self.shutdown()
        return 2 if self.fatal else 0

    def shutdown(self) -> None:
        procs = [c.proc for c in self.children if c.proc is not None]
        left = stop_tree([p.pid for p in procs])
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for child in self.children:
            child.proc = None
        if left:
            self.log.error("processes still running after stop: %s", left)
        else:
            self.log.info("all children stopped")
            if self.pid_file is not None:
                self.pid_file.unlink(missing_ok=True)

    def pids(self) -> dict[str, int | None]:
        return {c.name: (c.proc.pid if c.proc is not None else None) for c in self.children}


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for children: the daemon's own, with Flower's telemetry and update checks off."""
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", **(extra or {})}
