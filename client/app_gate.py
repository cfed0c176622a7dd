"""`ugafl-clientapp`: Flower's `flwr-clientapp` with the site's app approval in front of it.

The SuperNode's SuperExec starts `flwr-clientapp` from PATH for every message; the site daemon
puts this program first on that PATH under that name. It runs Flower's own ClientApp process,
except that the app bundle (FAB) the coordinator sent is checked before it is installed or any of
its code imported: the SHA-256 of its bytes, computed here (not the hash the coordinator states),
must be one of the site config's `approved_apps`. Otherwise the message is answered with an error
naming only that hash, the refusal is appended to WS/federation/refusals.jsonl, and nothing of the
app runs. The site config is the file named by UGAFL_SITE_CONFIG (set by the daemon); without it
every app is refused.
"""

from __future__ import annotations

import hashlib
import os
import sys

from ugafl.common.log import get_logger

log = get_logger("app_gate")
SITE_CONFIG_ENV = "UGAFL_SITE_CONFIG"


class AppNotApproved(Exception):
    """The coordinator asked this site to run an app it has not approved."""


def fab_sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def check_app(content: bytes) -> None:
    """Raise AppNotApproved unless the FAB bytes are one of the site's approved apps."""
    from ugafl.client.site_config import SiteConfig
    from ugafl.client.round.records import append_jsonl, refusals_path

    digest = fab_sha256(content)
    path = os.environ.get(SITE_CONFIG_ENV)
    if not path:
        raise AppNotApproved(f"app sha256:{digest} refused: no site config ({SITE_CONFIG_ENV} is not set)")
    site = SiteConfig.load(path)
    if digest in site.approved_apps:
        log.info("app sha256:%s is approved by this site", digest)
        return
    log.error("refusing app sha256:%s: not in approved_apps of %s", digest, path)
    append_jsonl(refusals_path(site.workspace), {"what": "app", "sha256": digest, "reason": "not in approved_apps"})
    raise AppNotApproved(f"this site has not approved app sha256:{digest}; the site adds it to approved_apps to take part")


def main() -> None:
    """Flower's `flwr-clientapp`, with `check_app` before the FAB is installed. It ends when the
    SuperExec that started it dies, even by SIGKILL: a killed site daemon left these running,
    re-parented to init for as long as the machine ran (Flower's own --parent-pid check did not
    end them)."""
    from ugafl.common.processes import set_parent_death_signal

    set_parent_death_signal()
    if os.getppid() == 1:  # the SuperExec died before the line above took effect
        sys.exit(1)
    from flwr.supernode.cli import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp

    install = run_clientapp.install_from_fab

    def checked_install(content: bytes, *args, **kwargs):
        check_app(content)
        return install(content, *args, **kwargs)

    run_clientapp.install_from_fab = checked_install
    from ugafl.common.log import configure

    configure()
    sys.argv[0] = "flwr-clientapp"
    sys.exit(flwr_clientapp())


if __name__ == "__main__":
    main()
