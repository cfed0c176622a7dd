"""The coordinator's kit, as plain functions over Flower's command-line programs: the SuperLink's
command (TLS, SuperNode authentication, a state database), enrolling hospitals' public keys,
listing sites online or offline under their names, starting and following runs of the federation
app, and the app bundle's hash that hospitals approve.

Files, under the config's state folder: superlink.db (Flower's state: enrolled keys, nodes,
runs), flwr-home/ (the `flwr` CLI's connection to this SuperLink), sites.json (the names given at
enrolment), checkpoints/ (the signed global model of every round, see federation.checkpoints.RoundStore),
logs/coordinator.log, status.json (the daemon).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ugafl.common.atomic import atomic_write_text
from ugafl.common.config import ConfigModel, HostPort, NonEmpty, Port, read_sections, validate, where
from ugafl.common.errors import ConfigError, DownError, UgaflError
from ugafl.common.log import get_logger
from ugafl.common.supervisor import daemon_env

log = get_logger("coordinator")
BIN = Path(sys.executable).parent
CONNECTION = "ugafl"
PKI_FILES = ("ca.pem", "superlink.pem", "superlink.key", "model-signing.key")


class CoordinatorSection(ConfigModel):
    """[coordinator]; paths are relative to the file's folder."""

    state: NonEmpty  # SuperLink database, enrolled sites, checkpoints, logs
    pki: NonEmpty  # from `ugafl pki init-coordinator`
    app: NonEmpty  # the Flower app folder
    address: HostPort  # how hospitals reach the coordinator: a name in its TLS certificate, and the port
    host: NonEmpty = "0.0.0.0"  # the public side (nginx, the Fleet API only) listens here ...
    port: Port = 9092  # ... on this port
    control_port: Port = 9093  # the SuperLink itself, with run control: on 127.0.0.1 only


FEDERATION_PATHS = ("central_checkpoint", "out_dir", "signing_key", "eval_data")  # relative to the file


@dataclass(frozen=True)
class CoordinatorConfig:
    """[coordinator] state, pki, host, port, address, app (paths relative to the file) and
    [federation]: the run settings (FederationSettings names; out_dir and signing_key default to
    STATE/checkpoints and PKI/model-signing.key), checked when the file is read."""

    path: Path
    state: Path
    pki: Path
    app: Path
    host: str = "0.0.0.0"
    port: int = 9092
    address: str = "127.0.0.1:9092"
    control_port: int = 9093
    federation: dict[str, Any] = field(default_factory=dict)

    @property
    def control_address(self) -> str:
        """Where the coordinator's own commands reach the SuperLink (run control): its loopback."""
        from ugafl.server.fleet_proxy import LOOPBACK

        return f"{LOOPBACK}:{self.control_port}"

    @staticmethod
    def load(path: str | Path) -> CoordinatorConfig:
        """The coordinator config at `path`; ConfigError naming the file, section and key if it is wrong."""
        from ugafl.server.federation.settings import FederationSettings

        path = Path(path).resolve()
        raw = read_sections(path, "coordinator config", ("coordinator", "federation"), required=("coordinator",))
        section = validate(CoordinatorSection, raw["coordinator"], where(path, "coordinator"))
        if section.control_port == section.port:
            raise ConfigError(f"{where(path, 'coordinator')}: control_port: {section.control_port} is also `port`; "
                              "the SuperLink's run control needs a port of its own")
        base = path.parent
        state, pki = (base / section.state).resolve(), (base / section.pki).resolve()
        federation = dict(raw.get("federation", {}))
        FederationSettings.from_section(federation, where(path, "federation"),
                                        **{k: "-" for k in ("central_checkpoint", "out_dir", "signing_key")
                                           if k not in federation})  # types and names now, not at the run
        for key in FEDERATION_PATHS:
            if federation.get(key):
                federation[key] = str((base / federation[key]).resolve())
        federation.setdefault("out_dir", str(state / "checkpoints"))
        federation.setdefault("signing_key", str(pki / "model-signing.key"))
        return CoordinatorConfig(path=path, state=state, pki=pki, app=(base / section.app).resolve(),
                                 host=section.host, port=section.port, address=section.address,
                                 control_port=section.control_port, federation=federation)

    def run_settings(self, **overrides: Any):
        """The federation settings of a run (refused here, before Flower, if wrong)."""
        from ugafl.server.federation.settings import FederationSettings

        return FederationSettings.from_section(self.federation, where(self.path, "federation"), **overrides)


def preflight(cfg: CoordinatorConfig) -> list[str]:
    """Refuse to start (ConfigError or PkiError naming the file) unless every file is there, private
    keys are private, the TLS set checks out (common.pki.check_server_pki) for the public address
    and for the loopback names the proxy and the coordinator's commands use, and nginx is
    installed; its warnings."""
    from ugafl.common.pki import check_server_pki, missing_loopback_names
    from ugafl.server.fleet_proxy import find_nginx

    for name in PKI_FILES:
        file = cfg.pki / name
        if not file.is_file():
            raise ConfigError(f"{file}: not found (made by `ugafl pki init-coordinator --dir {cfg.pki}`)")
        if name.endswith(".key") and file.stat().st_mode & 0o077:
            raise ConfigError(f"{file}: private key readable by others; chmod 600 it")
    if not (cfg.app / "pyproject.toml").is_file():
        raise ConfigError(f"{cfg.path}: [coordinator] app: {cfg.app} has no pyproject.toml (a Flower app folder)")
    warnings = check_server_pki(cfg.pki / "ca.pem", cfg.pki / "superlink.pem", cfg.pki / "superlink.key",
                                cfg.address.rsplit(":", 1)[0].strip("[]"))
    missing = missing_loopback_names(cfg.pki / "superlink.pem")
    if missing:
        raise ConfigError(f"{cfg.pki / 'superlink.pem'}: does not name {', '.join(missing)}, where the coordinator's "
                          f"proxy and commands reach the SuperLink; `ugafl pki renew --dir {cfg.pki}` adds them")
    find_nginx()
    return warnings


def superlink_argv(cfg: CoordinatorConfig) -> list[str]:
    from ugafl.server.fleet_proxy import LOOPBACK

    return [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(cfg.pki / "ca.pem"),
            "--ssl-certfile", str(cfg.pki / "superlink.pem"), "--ssl-keyfile", str(cfg.pki / "superlink.key"),
            "--enable-supernode-auth", "--database", str(cfg.state / "superlink.db"),
            "--disable-runtime-dependency-installation", "--host", LOOPBACK, "--port", str(cfg.control_port)]


def flwr_env(cfg: CoordinatorConfig) -> dict[str, str]:
    """Environment for the SuperLink and `flwr` commands: Flower's home in the state folder, with
    the connection to this SuperLink, and the venv first on PATH (the SuperLink starts
    flower-superexec from PATH)."""
    home = cfg.state / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    connection = (f'[superlink.{CONNECTION}]\naddress = "{cfg.control_address}"\n'
                  f'root-certificates = "{cfg.pki / "ca.pem"}"\n')
    if not (home / "config.toml").is_file() or (home / "config.toml").read_text() != connection:
        atomic_write_text(home / "config.toml", connection)
    return daemon_env({"FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_WAIT_POLICY": "PASSIVE"})


def _need_state(cfg: CoordinatorConfig) -> None:
    """ConfigError naming the config's [coordinator] state unless it is a folder: the commands that
    read the coordinator's state never make it (`ugafl server start` does)."""
    if not cfg.state.is_dir():
        raise ConfigError(f"{cfg.path}: [coordinator] state: {cfg.state} is not a folder; `ugafl server start "
                          f"--config {cfg.path}` makes it")


def flwr(cfg: CoordinatorConfig, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """A `flwr` command against this coordinator's SuperLink; DownError if it cannot be reached."""
    _need_state(cfg)
    try:
        done = subprocess.run([str(BIN / "flwr"), *args], env=flwr_env(cfg), capture_output=True, text=True,
                              timeout=timeout_s, cwd=cfg.state, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or "Connection to the SuperLink is unavailable" in done.stdout + done.stderr:
        raise DownError(f"cannot reach the coordinator's SuperLink at {cfg.control_address}: is it running "
                        f"(`ugafl server start --config {cfg.path}`)?")
    return done


def _flwr_json(cfg: CoordinatorConfig, *args: str) -> dict:
    done = flwr(cfg, *args, "--format", "json")
    try:
        payload = json.loads(done.stdout)
    except json.JSONDecodeError:
        payload = {}
    if not payload.get("success", False):
        detail = payload.get("error-message") or (done.stdout + done.stderr).strip()[-400:]
        raise UgaflError(f"the coordinator at {cfg.control_address} did not answer `flwr {' '.join(args)}`: {detail}")
    return payload


# ---------------------------------------------------------------------- sites

def _sites_path(cfg: CoordinatorConfig) -> Path:
    return cfg.state / "sites.json"


def enrolled(cfg: CoordinatorConfig) -> dict[str, dict]:
    path = _sites_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}


def enrol(cfg: CoordinatorConfig, public_key: Path, name: str) -> dict:
    """Register a hospital's SuperNode public key under NAME; its record (node id, fingerprint)."""
    from ugafl.common.clock import utc_now
    from ugafl.common.pki import is_node_name, node_fingerprint

    if not is_node_name(name):
        raise UgaflError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    if not public_key.is_file():
        raise UgaflError(f"{public_key}: not found")
    text = public_key.read_text(errors="replace").strip()
    if not text.startswith(("ecdsa-", "ssh-")) or "PRIVATE KEY" in text:
        raise UgaflError(f"{public_key}: not an OpenSSH public key (made by `ugafl pki node-keys`)")
    fp = node_fingerprint(public_key)
    sites = enrolled(cfg)
    if name in sites:
        raise UgaflError(f"a site named {name!r} is already enrolled (key sha256 {sites[name]['fingerprint']})")
    for other, record in sites.items():
        if record["fingerprint"] == fp:
            raise UgaflError(f"{public_key}: this key is already enrolled as {other!r}")
    for other, record in removed(cfg).items():
        if record["fingerprint"] == fp:
            raise UgaflError(f"{public_key}: this key was removed (site {other!r}, {record['removed_at']}) and stays "
                             "refused; the hospital makes a new key pair with `ugafl pki node-keys`")
    done = flwr(cfg, "supernode", "register", str(public_key), CONNECTION)
    match = re.search(r"SuperNode (\d+) registered successfully", done.stdout)
    if not match:
        raise UgaflError(f"enrolling {public_key} failed: {(done.stdout + done.stderr).strip()[-400:]}")
    sites[name] = {"node_id": match.group(1), "fingerprint": fp, "enrolled_at": utc_now(), "public_key": text}
    atomic_write_text(_sites_path(cfg), json.dumps(sites, indent=1, sort_keys=True))
    log.info("enrolled %s: node %s, key sha256 %s", name, match.group(1), fp)
    return sites[name]


def _removed_path(cfg: CoordinatorConfig) -> Path:
    return cfg.state / "removed_sites.json"


def removed(cfg: CoordinatorConfig) -> dict[str, dict]:
    """Sites taken out of the federation: their key fingerprints stay refused."""
    path = _removed_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}


def remove_site(cfg: CoordinatorConfig, name: str) -> dict:
    """Take a hospital out: unregister its SuperNode key at the SuperLink (its node can no longer
    connect) and refuse its key for good; the removed record."""
    from ugafl.common.clock import utc_now

    sites = enrolled(cfg)
    if name not in sites:
        raise UgaflError(f"no enrolled site named {name!r} (enrolled: {', '.join(sorted(sites)) or 'none'})")
    record = sites[name]
    _flwr_json(cfg, "supernode", "unregister", str(record["node_id"]), CONNECTION)
    if any(str(n["node-id"]) == str(record["node_id"])
           for n in _flwr_json(cfg, "supernode", "list", CONNECTION).get("nodes", []) if n.get("status") != "unregistered"):
        raise UgaflError(f"the coordinator still lists node {record['node_id']} of {name!r}; not removed")
    gone = removed(cfg)
    gone[name] = {**record, "removed_at": utc_now()}
    atomic_write_text(_removed_path(cfg), json.dumps(gone, indent=1, sort_keys=True))
    del sites[name]
    atomic_write_text(_sites_path(cfg), json.dumps(sites, indent=1, sort_keys=True))
    log.info("removed %s: node %s unregistered, key sha256 %s refused from now on", name, record["node_id"],
             record["fingerprint"])
    return gone[name]


def list_sites(cfg: CoordinatorConfig) -> list[dict]:
    """Every enrolled site with its status (online/offline/registered) as the SuperLink sees it."""
    nodes = {str(n["node-id"]): n for n in _flwr_json(cfg, "supernode", "list", CONNECTION).get("nodes", [])}
    out = []
    for name, record in sorted(enrolled(cfg).items()):
        node = nodes.pop(record["node_id"], {})
        out.append({"name": name, "node_id": record["node_id"], "status": node.get("status", "unknown"),
                    "online_at": node.get("online-at", ""), "offline_at": node.get("offline-at", ""),
                    "fingerprint": record["fingerprint"]})
    for node_id, node in nodes.items():  # registered with flwr directly, not through `ugafl server enrol`
        if node.get("status") == "unregistered":  # a removed site's node
            continue
        out.append({"name": "?", "node_id": node_id, "status": node.get("status", "unknown"),
                    "online_at": node.get("online-at", ""), "offline_at": node.get("offline-at", ""), "fingerprint": ""})
    return out


# ---------------------------------------------------------------------- runs

def app_hash(app: Path) -> str:
    """SHA-256 of the app bundle (FAB) `flwr run APP` sends: what a site lists in approved_apps."""
    from flwr.cli.build import build_fab_from_disk

    if not (app / "pyproject.toml").is_file():
        raise ConfigError(f"[coordinator] app: {app} has no pyproject.toml (a Flower app folder, e.g. deploy/flower_app)")
    try:
        return hashlib.sha256(build_fab_from_disk(app)).hexdigest()
    except (Exception, SystemExit) as error:  # Flower's builder exits (typer) or raises on a malformed app
        raise ConfigError(f"[coordinator] app: {app}: not a Flower app Flower can bundle ({error or type(error).__name__})") from None


def _run_config(settings) -> str:
    parts = []
    for key, value in settings.to_dict().items():
        if isinstance(value, str):
            if "'" in value:
                raise ConfigError(f"run setting {key}: single quotes are not allowed ({value!r})")
            parts.append(f"{key.replace('_', '-')}='{value}'")
        elif isinstance(value, bool):  # Flower reads the values as TOML: true / false
            parts.append(f"{key.replace('_', '-')}={'true' if value else 'false'}")
        else:
            parts.append(f"{key.replace('_', '-')}={value!r}")
    return " ".join(parts)


def start_run(cfg: CoordinatorConfig, follow: bool = True, timeout_s: float = 7 * 24 * 3600,
              **overrides: Any) -> tuple[int, str]:
    """`flwr run` the app with the [federation] settings; (run id, Flower's output). With `follow`
    it returns when the run has ended (its log streamed to the coordinator's log)."""
    settings = cfg.run_settings(**overrides)
    args = ["run", str(cfg.app), CONNECTION, "--run-config", _run_config(settings)] + (["--stream"] if follow else [])
    proc = subprocess.Popen([str(BIN / "flwr"), *args], env=flwr_env(cfg), cwd=cfg.state, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace")
    lines, run_id = [], None
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    for line in proc.stdout:
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.rstrip())
        lines.append(line)
        log.info("run | %s", line)
        match = re.search(r"Successfully started run (\d+)", line)
        if match:
            run_id = int(match.group(1))
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait()
    if run_id is None:
        raise UgaflError(f"the run was not started: {' / '.join(lines[-5:])}")
    return run_id, "\n".join(lines)


def runs(cfg: CoordinatorConfig) -> list[dict]:
    return _flwr_json(cfg, "list", CONNECTION).get("runs", [])


def run_status(cfg: CoordinatorConfig, run_id: int) -> dict:
    for run in runs(cfg):
        if int(run["run-id"]) == run_id:
            return run
    raise UgaflError(f"the coordinator knows no run {run_id}")


def stop_run(cfg: CoordinatorConfig, run_id: int) -> dict:
    """Stop a run (`flwr stop`); its status afterwards."""
    status = run_status(cfg, run_id)["status"]
    if status.startswith("finished"):
        raise UgaflError(f"run {run_id} has already ended ({status})")
    _flwr_json(cfg, "stop", str(run_id), CONNECTION)
    return run_status(cfg, run_id)


def run_logs(cfg: CoordinatorConfig, run_id: int) -> str:
    """A run's log as the SuperLink holds it (`flwr log --show`)."""
    run_status(cfg, run_id)  # a clear error for a run the coordinator does not know
    done = flwr(cfg, "log", str(run_id), CONNECTION, "--show")
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", done.stdout)


def checkpoints(cfg: CoordinatorConfig) -> list[dict]:
    """The signed global checkpoints kept, newest last, each with whether its signature verifies."""
    from ugafl.server.federation.checkpoints import _ROUND_FILE, RoundStore

    _need_state(cfg)
    settings = cfg.run_settings(central_checkpoint=cfg.federation.get("central_checkpoint") or "-")
    store = RoundStore(settings)
    out = []
    for path in sorted(store.out.glob("round-*.pt")):
        match = _ROUND_FILE.match(path.name)
        if match is None:  # round-0001.old.pt and the like: not a round's checkpoint, never resumed from
            log.debug("%s: not a round checkpoint's name; skipped", path)
            continue
        out.append({"round": int(match.group(1)), "path": str(path), "signed": store.verified(path)})
    return out


# ---------------------------------------------------------------------- the daemon

def serve(config: str | Path) -> int:
    """`ugafl server start`: the SuperLink on the loopback and nginx in front of it on the public
    port (the Fleet API only, server.fleet_proxy), both supervised (restarted if they exit), until
    SIGTERM."""
    from ugafl.common.log import add_file_log
    from ugafl.common.supervisor import Child, Supervisor
    from ugafl.server.fleet_proxy import find_nginx, nginx_argv, write_nginx_conf

    cfg = CoordinatorConfig.load(config)
    warnings = preflight(cfg)
    add_file_log(cfg.state / "logs" / "coordinator.log")
    for warning in warnings:
        log.warning("%s", warning)
    # If the daemon dies without stopping it, the SuperLink gets SIGKILL: on SIGTERM it waits for
    # open connections (a followed run's log stream) without end. Its state database is SQLite,
    # and its SuperExec and ServerApp stop when their parent goes.
    superlink = Child("superlink", superlink_argv(cfg), env=flwr_env(cfg), cwd=str(cfg.state),
                      death_signal=signal.SIGKILL)
    conf = write_nginx_conf(cfg.state, cfg.host, cfg.port, cfg.control_port, cfg.pki)
    proxy = Child("fleet-proxy", nginx_argv(find_nginx(), conf), cwd=str(cfg.state))
    supervisor = Supervisor(log, [superlink, proxy], pid_file=cfg.state / "processes.json")
    supervisor.install_signal_handlers()
    log.info("coordinator: hospitals reach the Fleet API on %s:%d (nginx, TLS); the SuperLink and its run "
             "control listen on %s only (SuperNode authentication); state in %s",
             cfg.host, cfg.port, cfg.control_address, cfg.state)
    status = cfg.state / "status.json"

    def tick() -> None:
        text = json.dumps({"pid": os.getpid(), "superlink_pid": superlink.proc.pid if superlink.proc else None,
                           "proxy_pid": proxy.proc.pid if proxy.proc else None,
                           "restarts": superlink.restarts, "address": cfg.address}, sort_keys=True)
        if not status.is_file() or status.read_text() != text:
            atomic_write_text(status, text)

    code = supervisor.run(on_tick=tick)
    status.unlink(missing_ok=True)
    log.info("coordinator stopped")
    return code
