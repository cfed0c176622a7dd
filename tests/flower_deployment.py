"""Flower's deployment engine on loopback for tests: a SuperLink with TLS, SuperNode
authentication and a state database, SuperNodes with their keys, and `flwr` commands against it.
FLWR_HOME and uv's cache live in the test's folder; run-time dependency installation is off.
Every process started here, and every process they started (SuperExec, ServerApp, ClientApp
children, some detached), is stopped by process id at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ugafl.client.daemon.site_daemon import SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S
from ugafl.common.processes import alive, descendants, stop_tree

BIN = Path(sys.executable).parent
CONNECTION = "ugafl-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A running SuperLink (+ SuperNodes added with `add_supernode`)."""

    def __init__(self, root: Path, pki: Path):
        self.root, self.pki = root, pki
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "UV_CACHE_DIR": str(root / "uv-cache"),
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
                    SUPEREXEC_POLL_ENV: SUPEREXEC_POLL_S}  # as the site daemon runs them
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        (self.home / "config.toml").write_text(
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\nroot-certificates = "{pki / "ca.pem"}"\n')

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.root)
        log.close()
        self.procs.append(proc)
        return proc

    def start_superlink(self) -> None:
        self._start("superlink", ["flower-superlink", "--ssl-ca-certfile", str(self.pki / "ca.pem"),
                                  "--ssl-certfile", str(self.pki / "server.pem"), "--ssl-keyfile", str(self.pki / "server.key"),
                                  "--enable-supernode-auth", "--database", str(self.root / "superlink-state.db"),
                                  "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port)])
        self.wait_for_log("superlink", "Uvicorn running on https://127.0.0.1", 60)

    def wait_for_log(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        path = self.root / f"{name}.log"
        while time.monotonic() < deadline:
            if path.is_file() and text in path.read_text(errors="replace"):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not log {text!r}:\n{path.read_text(errors='replace')[-3000:]}")

    def flwr(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, cwd=self.root)

    def register(self, public_key: Path) -> None:
        done = self.flwr("supernode", "register", str(public_key), CONNECTION, timeout_s=120)
        assert done.returncode == 0 and "registered successfully" in done.stdout, done.stdout + done.stderr

    def add_supernode(self, name: str, private_key: Path, node_config: str) -> None:
        self._start(name, ["flower-supernode", "--root-certificates", str(self.pki / "ca.pem"),
                           "--superlink", f"127.0.0.1:{self.port}", "--auth-supernode-private-key", str(private_key),
                           "--node-config", node_config, "--port", str(free_port())])

    def add_worker(self, name: str, site_config: Path) -> None:
        """The site's round worker (client.round.worker), as the site daemon runs it; returns once it listens."""
        self._start(name, ["python", "-m", "ugafl.client.round.worker", str(site_config)])
        self.wait_for_log(name, "round worker listening", 120)

    def run(self, app: Path, run_config: str, timeout_s: float = 900, stream: bool = True) -> tuple[int, str]:
        """`flwr run APP [--stream]`; (run id, its output). Without stream it returns once submitted."""
        done = self.flwr("run", str(app), CONNECTION, "--run-config", run_config, *(["--stream"] if stream else []),
                         timeout_s=timeout_s)
        output = done.stdout + done.stderr
        match = re.search(r"Successfully started run (\d+)", output)
        assert match, output
        return int(match.group(1)), output

    def run_status(self, run_id: int) -> dict:
        done = self.flwr("list", CONNECTION, "--format", "json", timeout_s=120)
        runs = json.loads(done.stdout)["runs"]
        return next(r for r in runs if int(r["run-id"]) == run_id)

    def kill_serverapp(self) -> int:
        """SIGKILL the running ServerApp process (the coordinator's app); its pid."""
        for pid in sorted(descendants([self.procs[0].pid])):
            try:
                command = (Path("/proc") / str(pid) / "cmdline").read_bytes()
            except OSError:
                continue
            if b"flwr-serverapp" in command and alive(pid):
                os.kill(pid, signal.SIGKILL)
                return pid
        raise AssertionError("no flwr-serverapp process is running")

    def stop(self) -> list[int]:
        """Stop every process started here with all their descendants (SIGTERM, then SIGKILL);
        returns the pids still alive after that (none, unless something is wrong)."""
        left = stop_tree([p.pid for p in self.procs])
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return left


@contextmanager
def deployment(root: Path, pki: Path):
    dep = Deployment(root, pki)
    try:
        dep.start_superlink()
        yield dep
    finally:
        left = dep.stop()
        assert not left, f"processes still running after stop: {left}"
