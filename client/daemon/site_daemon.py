"""The hospital's daemon (`ugafl site start --config FILE`): one process that keeps the site's
parts running for months.

Children, each restarted if it exits:
- the round worker (client.round.worker): answers the round's messages, forwarded by the
  ClientApps, with torch and the handlers loaded once instead of in every ClientApp process;
- the Flower SuperNode, with the site's key and the coordinator's CA. Every ClientApp it starts
  passes through `ugafl-clientapp` (the app approval, see app_gate) and runs with the site config;
- the inbox watcher (registers new slides, precomputes uncertainty with the current model);
- the review web app.

The daemon reads the SuperNode's output to know the connection: connected, coordinator not
reachable (the SuperNode retries by itself), refused (key not enrolled, or the same key still
online from an instance that just died: retried every 15 s), or the coordinator's certificate not
verified by the configured CA (a configuration fault: the daemon stops with exit code 2).

Files, under WS/daemon/: lock (one daemon per workspace), status.json (what `ugafl site status`
shows), bin/ (the ClientApp gate), flwr-home/. The log goes to stderr and to WS/logs/site.log.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ugafl.client.site_config import SiteConfig
from ugafl.common.atomic import atomic_write_text
from ugafl.common.errors import ConfigError
from ugafl.common.log import add_file_log, get_logger
from ugafl.common.supervisor import STOP, Child, Supervisor, daemon_env

log = get_logger("site_daemon")
BIN = Path(sys.executable).parent
REFUSED_RETRY_S = 15.0


@dataclass(frozen=True)
class SiteDaemonConfig:
    """The site TOML's daemon sections: [coordinator] address, ca, node_key (paths relative to
    the file); [review] host, port; [daemon] runtime_port (the SuperNode's local API), inbox_poll_s."""

    path: Path
    site: SiteConfig
    coordinator: str
    ca: Path
    node_key: Path
    review_host: str = "127.0.0.1"
    review_port: int = 8765
    runtime_port: int = 9094
    inbox_poll_s: float = 30.0

    @staticmethod
    def load(path: str | Path) -> SiteDaemonConfig:
        path = Path(path).resolve()
        site = SiteConfig.load(path)  # every section validated, naming the file, section and key
        if site.coordinator is None:
            raise ConfigError(f"{path}: no [coordinator] section (address, ca, node_key): the daemon needs it")
        if "'" in str(path):
            raise ConfigError(f"{path}: the site config's path must not contain a single quote")
        coord = site.coordinator
        return SiteDaemonConfig(path=path, site=site, coordinator=coord.address, ca=(path.parent / coord.ca).resolve(),
                                node_key=(path.parent / coord.node_key).resolve(), review_host=site.review.host,
                                review_port=site.review.port, runtime_port=site.daemon.runtime_port,
                                inbox_poll_s=site.daemon.inbox_poll_s)


def preflight(cfg: SiteDaemonConfig) -> None:
    """Every file the site needs, checked before anything starts; ConfigError names the first
    one that is missing or wrong."""
    from cryptography import x509

    for what, file in (("[coordinator] ca", cfg.ca), ("[coordinator] node_key", cfg.node_key),
                       *((f"[site] trusted_keys ({k.name})", k) for k in cfg.site.trusted_keys)):
        if not file.is_file():
            raise ConfigError(f"{cfg.path}: {what}: {file} not found")
    try:
        x509.load_pem_x509_certificate(cfg.ca.read_bytes())
    except ValueError:
        raise ConfigError(f"{cfg.path}: [coordinator] ca: {cfg.ca} is not a PEM certificate") from None
    if cfg.node_key.stat().st_mode & 0o077:
        raise ConfigError(f"{cfg.node_key}: the SuperNode's private key is readable by others; chmod 600 it")
    if not cfg.site.slides.is_dir():
        raise ConfigError(f"{cfg.path}: [site] slides: {cfg.site.slides} is not a folder")
    if cfg.site.workspace.exists() and not cfg.site.workspace.is_dir():
        raise ConfigError(f"{cfg.path}: [site] workspace: {cfg.site.workspace} is a file, not a folder")
    if (cfg.site.workspace / "queue.db").exists():  # a damaged queue: said now, not by every child
        from ugafl.client.queue.store import CorrectionQueue

        CorrectionQueue(cfg.site.workspace, create=False).close()
    if cfg.site.device.startswith("cuda"):  # a GPU the machine lacks: said now, not at the first round
        from ugafl.common.model import pick_device

        pick_device(cfg.site.device, f"{cfg.path} [site] device")
    if not cfg.site.approved_apps:
        log.warning("%s: [site] approved_apps is empty: every run the coordinator starts will be refused", cfg.path)


def check_coordinator_tls(address: str, ca: Path, timeout_s: float = 5.0) -> bool:
    """True if the coordinator answered with a certificate the CA verifies; False if it is not
    reachable now; ConfigError if it answered with a certificate the CA does not verify."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")):
                return True
    except ssl.SSLCertVerificationError as error:
        raise ConfigError(f"the coordinator at {address} presented a certificate that {ca} does not verify "
                          f"({error.verify_message}): wrong CA file, or not the coordinator") from None
    except (OSError, ssl.SSLError) as error:
        log.warning("coordinator %s not reachable now (%s); the SuperNode will keep trying", address, error)
        return False


# how often the SuperNode's SuperExec looks for a message to start a ClientApp for (Flower's default: 1 s)
SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2"


class SiteDaemon:
    """The supervisor of one site's children, and its status file."""

    def __init__(self, cfg: SiteDaemonConfig):
        self.cfg = cfg
        self.ws = cfg.site.workspace
        self.dir = self.ws / "daemon"
        self.connection = {"state": "starting", "since": time.time(), "detail": ""}
        self.refused_since: float | None = None
        self._refusal_logged = 0.0
        self._last_status = ""

    # ------------------------------------------------------------------ children

    def _gate_bin(self) -> Path:
        """WS/daemon/bin/flwr-clientapp -> ugafl-clientapp: first on the SuperNode's PATH."""
        folder = self.dir / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "flwr-clientapp"
        target = BIN / "ugafl-clientapp"
        if not target.is_file():
            raise ConfigError(f"{target} not found: the ugafl package is not installed in this environment")
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        return folder

    def children(self) -> list[Child]:
        cfg = self.cfg
        env = daemon_env({"PATH": f"{self._gate_bin()}:{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                          "FLWR_HOME": str(self.dir / "flwr-home"), "UGAFL_SITE_CONFIG": str(cfg.path),
                          "OMP_WAIT_POLICY": "PASSIVE", SUPEREXEC_POLL_ENV: SUPEREXEC_POLL_S})
        supernode = Child("supernode", [str(BIN / "flower-supernode"), "--root-certificates", str(cfg.ca),
                                        "--superlink", cfg.coordinator, "--auth-supernode-private-key", str(cfg.node_key),
                                        "--node-config", f"site-config='{cfg.path}'",
                                        "--port", str(cfg.runtime_port)],
                          env=env, cwd=str(self.dir), on_line=self._supernode_line)
        # the round worker answers the ClientApps' messages with torch already loaded (client.round.worker)
        worker = Child("worker", [str(BIN / "python"), "-m", "ugafl.client.round.worker", str(cfg.path)],
                       env=env, cwd=str(self.dir))
        watcher = Child("inbox", [str(BIN / "python"), "-m", "ugafl.client.daemon.inbox_watcher", str(cfg.path),
                                  str(cfg.inbox_poll_s)], env=env, cwd=str(self.dir))
        review = Child("review", [str(BIN / "ugafl"), "review", "--workspace", str(self.ws),
                                  *cfg.site.review.command_options(), "--slides", str(cfg.site.slides)],
                       env=env, cwd=str(self.dir))
        return [worker, supernode, watcher, review]

    def _set(self, state: str, detail: str = "") -> None:
        if state != self.connection["state"]:
            self.connection = {"state": state, "since": time.time(), "detail": detail}

    def _supernode_line(self, line: str):
        if "SuperNode ID:" in line or "Connection successful" in line:
            self.refused_since = None
            if self.connection["state"] != "connected":
                log.info("connected to the coordinator at %s", self.cfg.coordinator)
            self._set("connected")
        elif "Connection attempt failed" in line:
            if self.connection["state"] in ("refused", "tls-error"):
                return None  # the exited SuperNode's SuperExec retrying its local API: not the coordinator
            if self.connection["state"] != "connecting":
                log.warning("coordinator %s not reachable; the SuperNode keeps trying", self.cfg.coordinator)
            self._set("connecting", "coordinator not reachable")
        elif "CERTIFICATE_VERIFY_FAILED" in line:
            reason = (f"the coordinator at {self.cfg.coordinator} presented a certificate that {self.cfg.ca} "
                      "does not verify: wrong CA file, or not the coordinator")
            log.error("%s", reason)
            self._set("tls-error", reason)
            return STOP
        elif "Failed to activate SuperNode" in line:
            now = time.time()
            self.refused_since = self.refused_since or now
            from ugafl.common.pki import node_fingerprint

            pub = self.cfg.node_key.with_suffix(".pub")
            fp = node_fingerprint(pub) if pub.is_file() else "?"
            reason = (f"the coordinator refused this site's key (sha256 {fp}): not enrolled, or a SuperNode "
                      f"with this key is still online (then it clears within about a minute)")
            if self.connection["state"] != "refused" or now - self._refusal_logged > 600:  # not every 15 s
                log.error("%s; retrying every %.0f s", reason, REFUSED_RETRY_S)
                self._refusal_logged = now
            self._set("refused", reason)
            return REFUSED_RETRY_S
        return None

    # ------------------------------------------------------------------ status

    def write_status(self, supervisor: Supervisor) -> None:
        status = {"pid": os.getpid(), "coordinator": self.cfg.coordinator, "connection": self.connection,
                  "children": {c.name: {"pid": c.proc.pid if c.proc else None, "restarts": c.restarts,
                                        "last_exit": c.last_exit} for c in supervisor.children},
                  "review": f"http://{self.cfg.review_host}:{self.cfg.review_port}/"}
        text = json.dumps(status, indent=1, sort_keys=True)
        if text != self._last_status:
            atomic_write_text(self.dir / "status.json", text)
            self._last_status = text

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise ConfigError(f"another site daemon is running for {self.ws} (pid {lock.read().strip() or '?'})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        from ugafl.client.queue.store import CorrectionQueue

        CorrectionQueue(self.ws, create=True).close()  # a new hospital's empty queue: the review app and add-user need it
        supervisor = Supervisor(log, self.children(), pid_file=self.dir / "processes.json")
        supervisor.install_signal_handlers()
        log.info("site daemon for %s (workspace %s), coordinator %s", self.cfg.site.name or self.cfg.path.stem,
                 self.ws, self.cfg.coordinator)
        code = supervisor.run(on_tick=lambda: self.write_status(supervisor))
        self.connection = {"state": "stopped", "since": time.time(),
                           "detail": supervisor.fatal or self.connection.get("detail", "")}
        self.write_status(supervisor)
        lock.close()
        log.info("site daemon stopped")
        return code


def start(config: str | Path) -> int:
    """`ugafl site start`: check, then supervise until SIGTERM. The exit code."""
    cfg = SiteDaemonConfig.load(config)
    preflight(cfg)
    add_file_log(cfg.site.workspace / "logs" / "site.log")
    check_coordinator_tls(cfg.coordinator, cfg.ca)
    return SiteDaemon(cfg).run()


def _read_status(path: Path) -> dict:
    """The daemon's status.json; UgaflError naming it when it is not what the daemon writes."""
    from ugafl.common.errors import UgaflError

    try:
        status = json.loads(path.read_bytes().decode("utf-8"))
        int(status["pid"]), status["connection"]["state"]  # noqa: B018 (the fields read below)
    except (ValueError, KeyError, TypeError) as error:
        raise UgaflError(f"{path}: not the daemon's status file ({type(error).__name__}: {error}); remove it, the "
                         "daemon writes it again when it starts") from None
    return status


def site_status(config: str | Path) -> dict:
    """What `ugafl site status` shows: the daemon and its connection, the model version, queue
    counts, the last round taken part in, the inbox register and refusals. Reads files only."""
    from ugafl.client.daemon.inbox_watcher import read_registry
    from ugafl.client.queue.schema import DB_NAME
    from ugafl.client.queue.store import CorrectionQueue
    from ugafl.client.round.records import current_model_info, ledger_path, read_jsonl, refusals_path
    from ugafl.common.processes import alive

    cfg = SiteDaemonConfig.load(config)
    ws = cfg.site.workspace
    if ws.exists() and not ws.is_dir():
        raise ConfigError(f"{cfg.path}: [site] workspace: {ws} is a file, not a folder")
    path = ws / "daemon" / "status.json"
    daemon = _read_status(path) if path.is_file() else None
    running = bool(daemon and alive(int(daemon["pid"])) and daemon["connection"]["state"] != "stopped")
    model = current_model_info(ws)
    if (ws / DB_NAME).exists():
        with CorrectionQueue(ws, create=False) as queue:
            counts = queue.counts()
    else:  # nothing queued yet (or a workspace path that is wrong): say so, create nothing
        counts = {}
    ledger = read_jsonl(ledger_path(ws))  # in the order the messages came (Flower's run ids are random)

    def round_of(entry: dict) -> tuple:  # a round re-run under a new run id (after a restart) counts once
        return entry["model_in"].get("run"), entry["round"]

    rounds = {round_of(e) for e in ledger}
    last = [e for e in ledger if round_of(e) == round_of(ledger[-1])] if ledger else []
    registry = read_registry(ws)
    return {"site": cfg.site.name or cfg.path.stem, "workspace": str(ws), "running": running,
            "pid": daemon["pid"] if running else None,
            "connection": daemon["connection"] if daemon else {"state": "never started", "detail": ""},
            "coordinator": cfg.coordinator, "children": daemon["children"] if daemon else {},
            "model_version": model["version"] if model else None,
            "model_round": model["signed"]["statement"].get("round") if model else None,
            "queue": counts, "rounds_taken_part": len(rounds),
            "last_round": {"run": last[-1]["model_in"].get("run"), "round": last[-1]["round"],
                           "messages": [e["type"] for e in last], "at": last[-1]["at"],
                           "update_sent": any(e["update_out"] for e in last)} if last else None,
            "inbox": {state: sum(e["state"] == state for e in registry.values())
                      for state in ("registered", "pending", "unreadable")},
            "refusals": len(read_jsonl(refusals_path(ws))), "train": cfg.site.train,
            "review": f"http://{cfg.review_host}:{cfg.review_port}/"}
