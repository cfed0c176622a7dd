"""`ugafl server`: the coordinator's kit (thin wrappers over server/coordinator.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

CONFIG = click.option("--config", "config", type=click.Path(path_type=Path), required=True,
                      help="The coordinator's TOML (see deploy/coordinator/coordinator.toml).")


def _cfg(config: Path):
    from ugafl.server.coordinator import CoordinatorConfig

    return CoordinatorConfig.load(config)


@click.group("server")
def server() -> None:
    """The coordinator: SuperLink, enrolment, sites, runs, checkpoints."""


@server.command("start")
@CONFIG
def start_cmd(config: Path) -> None:
    """Run the SuperLink (TLS, node authentication, state database) until SIGTERM."""
    from ugafl.server.coordinator import serve

    sys.exit(serve(config))


@server.command("enrol")
@CONFIG
@click.argument("public_key", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The hospital's name, shown by `ugafl server sites`.")
def enrol_cmd(config: Path, public_key: Path, name: str) -> None:
    """Register a hospital's SuperNode public key (NAME.pub from `ugafl pki node-keys`)."""
    from ugafl.server.coordinator import enrol

    record = enrol(_cfg(config), public_key, name)
    click.echo(f"enrolled {name}: node {record['node_id']}, key sha256 {record['fingerprint']}")


AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table.")
DOWN = "Exit code 3 when the coordinator's SuperLink is not running or not reachable."


@server.command("sites", help=f"Enrolled sites, online or offline. {DOWN}")
@CONFIG
@AS_JSON
def sites_cmd(config: Path, as_json: bool) -> None:
    from ugafl.server.coordinator import list_sites

    sites = list_sites(_cfg(config))
    if as_json:
        click.echo(json.dumps(sites, indent=1))
        return
    click.echo(f"{'site':<16} {'status':<10} {'node':<22} {'online since / offline at'}")
    for s in sites:
        when = s["online_at"] if s["status"] == "online" else s["offline_at"]
        click.echo(f"{s['name']:<16} {s['status']:<10} {s['node_id']:<22} {when}")


@server.command("remove-site")
@CONFIG
@click.argument("name")
def remove_site_cmd(config: Path, name: str) -> None:
    """Take a hospital out of the federation: its node is unregistered and its key refused from now on."""
    from ugafl.server.coordinator import remove_site

    record = remove_site(_cfg(config), name)
    click.echo(f"removed {name}: node {record['node_id']} unregistered; key sha256 {record['fingerprint']} refused "
               "from now on")


@server.command("stop-run")
@CONFIG
@click.argument("run_id", type=int)
def stop_run_cmd(config: Path, run_id: int) -> None:
    """Stop a run; the rounds it completed stay signed, and the next run resumes after them."""
    from ugafl.server.coordinator import stop_run

    click.echo(f"run {run_id}: {stop_run(_cfg(config), run_id)['status']}")


@server.command("logs")
@CONFIG
@click.argument("run_id", type=int)
def logs_cmd(config: Path, run_id: int) -> None:
    """A run's log, as the coordinator's SuperLink holds it."""
    from ugafl.server.coordinator import run_logs

    click.echo(run_logs(_cfg(config), run_id), nl=False)


@server.command("app-hash")
@CONFIG
def app_hash_cmd(config: Path) -> None:
    """SHA-256 of the federation app bundle: hospitals add it to approved_apps."""
    from ugafl.server.coordinator import app_hash

    click.echo(app_hash(_cfg(config).app))


@server.command("run")
@CONFIG
@click.option("--rounds", type=int, default=None, help="Override [federation] num_rounds.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Stream the run's log until it ends.")
def run_cmd(config: Path, rounds: int | None, follow: bool) -> None:
    """Start a run of the federation (resuming after the newest signed round) and follow it."""
    from ugafl.common.errors import UgaflError
    from ugafl.server.coordinator import run_status, start_run

    cfg = _cfg(config)
    run_id, _ = start_run(cfg, follow=follow, **({"num_rounds": rounds} if rounds else {}))
    try:
        status = run_status(cfg, run_id)["status"]
    except UgaflError as error:
        click.echo(f"run {run_id}: status unknown ({error})", err=True)
        sys.exit(1)
    click.echo(f"run {run_id}: {status}")
    if follow and status != "finished:completed":
        sys.exit(1)


@server.command("runs", help=f"Runs the coordinator knows, with their real status. {DOWN}")
@CONFIG
@AS_JSON
def runs_cmd(config: Path, as_json: bool) -> None:
    from ugafl.server.coordinator import runs

    listed = runs(_cfg(config))
    if as_json:
        keys = ("run-id", "status", "status-details", "elapsed", "fab-hash", "pending-at", "starting-at", "running-at",
                "finished-at")
        click.echo(json.dumps([{k.replace("-", "_"): (int(r[k]) if k == "run-id" else r.get(k, "")) for k in keys}
                               for r in listed], indent=1))
        return
    for r in listed:
        click.echo(f"run {r['run-id']:<22} {r['status']:<22} {r.get('elapsed', '')}")
    if not listed:
        click.echo("no runs yet")


@server.command("checkpoints")
@CONFIG
@AS_JSON
def checkpoints_cmd(config: Path, as_json: bool) -> None:
    """The signed global checkpoints kept (round-NNNN.pt), and whether each signature verifies."""
    from ugafl.server.coordinator import checkpoints

    kept = checkpoints(_cfg(config))
    if as_json:
        click.echo(json.dumps(kept, indent=1))
        return
    for c in kept:
        click.echo(f"round {c['round']:>4}  {'signed' if c['signed'] else 'NOT SIGNED/INVALID':<18} {c['path']}")
    if not kept:
        click.echo("no round checkpoints yet")
