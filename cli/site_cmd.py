"""`ugafl site`: the hospital's daemon and its status (thin wrappers over client/daemon/site_daemon.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

CONFIG = click.option("--config", "config", type=click.Path(path_type=Path), required=True,
                      help="The site's TOML (see deploy/hospital/site.toml).")


@click.group("site")
def site() -> None:
    """A hospital's side: the daemon (SuperNode, inbox watcher, review app) and its status."""


@site.command("start")
@CONFIG
def start_cmd(config: Path) -> None:
    """Run the site daemon in the foreground until SIGTERM (systemd: deploy/hospital/ugafl-site.service)."""
    from ugafl.client.daemon.site_daemon import start

    sys.exit(start(config))


DOWN_EXIT = 3  # the daemon is not running (as for a service manager's status: not 0, not a bad input's 2)


@site.command("status")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (stable keys).")
def status_cmd(config: Path, as_json: bool) -> None:
    """Connection, model version, queue counts, last round.

    Exit code 0 when the site daemon is running, 3 when it is not (the status is printed all the
    same), 2 for a wrong config. Reads the workspace's files only; creates nothing."""
    from ugafl.client.daemon.site_daemon import site_status

    s = site_status(config)
    if as_json:
        click.echo(json.dumps(s, indent=1, sort_keys=True))
        sys.exit(0 if s["running"] else DOWN_EXIT)
    conn = s["connection"]
    last = s["last_round"]
    lines = [("site", s["site"]), ("daemon", f"running (pid {s['pid']})" if s["running"] else "not running"),
             ("coordinator", f"{s['coordinator']}: {conn['state']}" + (f" ({conn['detail']})" if conn.get("detail") else "")),
             ("model", f"{s['model_version']} (after round {s['model_round']})" if s["model_version"] else "none yet"),
             ("queue", ", ".join(f"{k} {v}" for k, v in s["queue"].items()) or "none yet (no queue.db in the workspace)"),
             ("last round", f"run {last['run']} round {last['round']} ({', '.join(last['messages'])}; "
                            f"update sent: {'yes' if last['update_sent'] else 'no'}) at {last['at'][:19]}" if last else "none"),
             ("rounds taken part", str(s["rounds_taken_part"])), ("training", "yes" if s["train"] else "no (query only)"),
             ("inbox", ", ".join(f"{k} {v}" for k, v in s["inbox"].items())), ("refused", str(s["refusals"])),
             ("review app", s["review"])]
    for key, value in lines:
        click.echo(f"{key:<18} {value}")
    if not s["running"]:
        click.echo(f"the site daemon is not running (`ugafl site start --config {config}`)", err=True)
        sys.exit(DOWN_EXIT)
