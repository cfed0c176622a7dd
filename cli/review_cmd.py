"""`ugafl review`: the pathologist's review web app for a site workspace's correction queue."""

from __future__ import annotations

from pathlib import Path

import click

from ugafl.cli.queue_cmd import WORKSPACE, _user


@click.command("review")
@WORKSPACE
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the queue to the network (no TLS, no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port.")
@click.option("--reviewer", default=None, help="Name filled in on the page [default: your login name].")
@click.option("--open-browser/--no-open-browser", default=False, show_default=True, help="Open the page in the default browser.")
def review(workspace: Path, host: str, port: int, reviewer: str | None, open_browser: bool) -> None:
    """Serve the review web app: next patch by priority, correct, accept, reject or skip."""
    from ugafl.client.review.server import ReviewServer, is_loopback
    from ugafl.common.log import get_logger

    log = get_logger("review")
    if not is_loopback(host):
        log.warning("listening on %s: anyone who can reach this address can read and change the queue", host)
    try:
        server = ReviewServer(workspace, host, port, reviewer or _user())
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    counts = server.service.progress()
    click.echo(f"review app for {workspace}: {server.url}  ({counts['pending']} pending, "
               f"{counts['in_review']} in review); Ctrl+C to stop", )
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()  # SIGINT and SIGTERM (a service manager) stop it: requests under way finish
    finally:
        server.server_close()
        click.echo("review app stopped")
