"""Helpers for the deployment-kit tests: `ugafl` commands run as a hospital's IT staff or a
coordinator would run them (each one recorded, so the test can hold the deployment guide to the
same commands), daemons started as processes and stopped by process id, and waiting on status."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ugafl.common.processes import alive, command_line, descendants, stop_tree

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "deploy" / "DEPLOYMENT.md"


def command_shape(argv: list[str]) -> tuple[str, ...]:
    """`ugafl server enrol --config X KEY --name N` -> ('server', 'enrol', '--config', '--name'):
    the subcommand and the option names, without values."""
    words = [a for a in argv if not a.startswith("-")]
    sub = []
    for a in argv:
        if a.startswith("-"):
            break
        sub.append(a)
    options = sorted(a.split("=")[0] for a in argv if a.startswith("--"))
    return (*sub[:2], *options) if len(words) >= 2 else tuple(sub)


def guide_commands(text: str) -> set[tuple[str, ...]]:
    """The shapes of every `ugafl ...` line in the guide's shell blocks (continuations joined)."""
    shapes = set()
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("sudo -u ugafl ")
            if line.startswith("ugafl "):
                shapes.add(command_shape(line.split()[1:]))
    return shapes


class Kit:
    """Runs `ugafl` commands and daemons for one test; stops every daemon at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "UV_CACHE_DIR": str(root / "uv-cache")}
        self.ran: set[tuple[str, ...]] = set()
        self.daemons: dict[str, subprocess.Popen] = {}
        self.pids_seen: set[int] = set()

    def ugafl(self, *args: str, check: bool = True, timeout_s: float = 300,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.ran.add(command_shape(list(args)))
        stdin = {"stdin": subprocess.DEVNULL} if input is None else {"input": input}
        done = subprocess.run([str(BIN / "ugafl"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, **stdin)
        if check:
            assert done.returncode == 0, f"ugafl {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """A long-running `ugafl` command (a daemon, or a followed run) in the background."""
        self.ran.add(command_shape(list(args)))
        log = open(self.root / f"{name}.out", "a")
        proc = subprocess.Popen([str(BIN / "ugafl"), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self.daemons[name] = proc
        return proc

    def output(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace") if path.is_file() else ""

    def tree(self, name: str) -> set[int]:
        pids = descendants([self.daemons[name].pid])
        self.pids_seen |= pids
        return pids

    def kill(self, name: str) -> set[int]:
        """SIGKILL a daemon (not its children: they must go by themselves); its process tree before."""
        pids = self.tree(name)
        os.kill(self.daemons[name].pid, signal.SIGKILL)
        self.daemons[name].wait(timeout=30)
        return pids

    def stop_all(self) -> list[int]:
        for proc in self.daemons.values():
            if proc.poll() is None:
                self.pids_seen |= descendants([proc.pid])
                proc.send_signal(signal.SIGTERM)
        for proc in self.daemons.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        ours = re.compile(r"flwr|flower|ugafl|nginx")
        return stop_tree([p for p in self.pids_seen if alive(p) and ours.search(command_line(p))])


def flwr_as_hospital(root: Path, address: str, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `flwr` command as an enrolled hospital (or anyone holding the public ca.pem) would run it,
    against `address`, the coordinator's public side: its own Flower home under `root`. `args` name
    the connection as `hospital`."""
    home = root / "hospital-flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink.hospital]\naddress = "{address}"\nroot-certificates = "{ca}"\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run([str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=root)


def wait_for(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 1.0):
    """The tests' wait on a condition (never a fixed sleep): call `check` every `every_s` until it
    returns something truthy, and return that; a check that raises (file not there yet, a status
    not yet JSON) counts as not yet. After `timeout_s`, fail naming `what` was waited for."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (AssertionError, json.JSONDecodeError, OSError, KeyError):
            value = None
        if value:
            print(f"waited {time.monotonic() - started:.0f} s for {what}")  # the test's profile (pytest -rP)
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
