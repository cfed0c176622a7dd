"""`ugafl review`: the pathologist's review web app for a site workspace's correction queue, and
`ugafl review add-user` for its built-in accounts."""

from __future__ import annotations

import sys
from pathlib import Path

import click



@click.group("review", invoke_without_command=True)
@click.option("--workspace", type=click.Path(path_type=Path), default=None, help="Site workspace folder.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --auth accounts or proxy (and TLS in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port.")
@click.option("--auth", type=click.Choice(["local", "proxy", "accounts"]), default="local", show_default=True,
              help="Who reviews: local = the account running this (loopback only); proxy = the hospital's "
                   "authenticating proxy's header; accounts = built-in accounts (review add-user).")
@click.option("--user-header", default="X-Remote-User", show_default=True, help="auth proxy: the header naming the user.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, default=("127.0.0.1",), show_default=True,
              help="auth proxy: an address whose user header is believed; repeat for several.")
@click.option("--host-name", "host_names", multiple=True, help="A host name browsers or the proxy use for this app "
              "(the Host header is checked); repeat for several.")
@click.option("--url-prefix", default="", help="The path the app is served under behind a proxy, e.g. /review.")
@click.option("--slides", type=click.Path(path_type=Path), default=None,
              help="The folder of the slides the patches come from (the site's inbox): the viewer shows each "
                   "patch in its slide [default: the patch alone].")
@click.option("--open-browser/--no-open-browser", default=False, show_default=True, help="Open the page in the default browser.")
@click.pass_context
def review(ctx: click.Context, workspace: Path | None, host: str, port: int, auth: str, user_header: str,
           trusted_proxies: tuple[str, ...], host_names: tuple[str, ...], url_prefix: str, slides: Path | None,
           open_browser: bool) -> None:
    """Serve the review web app: next patch by priority, correct, accept, reject or skip."""
    if ctx.invoked_subcommand is not None:
        return
    if workspace is None:
        raise click.UsageError("Missing option '--workspace'.")
    from ugafl.cli.checks import existing_folder, site_queue

    site_queue(workspace)  # a mistyped path must not become an empty queue
    if slides is not None:
        existing_folder(slides, "--slides", "slide folder")
    from ugafl.client.review.auth import AuthSettings
    from ugafl.client.review.server import ReviewServer, is_loopback
    from ugafl.common.log import get_logger

    settings = AuthSettings(mode=auth, user_header=user_header, trusted_proxies=trusted_proxies)
    try:
        server = ReviewServer(workspace, host, port, settings, host_names, url_prefix, slides=slides)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    counts = server.service.progress()
    users = f", {len(server.identity.accounts.users())} account(s)" if auth == "accounts" else ""
    log = get_logger("review")
    if not is_loopback(host):
        log.warning("serving plain HTTP on %s: passwords, session cookies and patient images travel unencrypted; "
                    "put the hospital's TLS proxy in front (deploy/hospital/nginx-review.conf)", host)
    if auth == "accounts" and not server.identity.accounts.users():
        log.warning("no accounts yet: nobody can sign in; add one with `ugafl review add-user --workspace %s NAME`",
                    workspace)
    click.echo(f"review app for {workspace}: {server.url}  ({counts['pending']} pending, "
               f"{counts['in_review']} in review; sign-in: {auth}{users}); Ctrl+C to stop")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()  # SIGINT and SIGTERM (a service manager) stop it: requests under way finish
    finally:
        server.server_close()
        click.echo("review app stopped")


@review.command("add-user")
@click.option("--workspace", type=click.Path(path_type=Path), required=True, help="Site workspace folder.")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else prompted twice).")
@click.option("--replace", is_flag=True, help="Set a new password for an existing user.")
def add_user(workspace: Path, name: str, password_stdin: bool, replace: bool) -> None:
    """Add a built-in account (for --auth accounts); the password is stored as a scrypt hash."""
    from ugafl.client.review.auth import Accounts, check_user_name

    check_user_name(name, "NAME")
    _workspace_with_queue(workspace)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    Accounts(workspace).add(name, password, replace=replace)
    click.echo(f"{'new password for' if replace else 'added'} {name} ({workspace / 'review' / 'accounts.json'})"
               + ("; their sessions have ended" if replace else ""))


def _workspace_with_queue(workspace: Path) -> None:
    from ugafl.cli.checks import site_queue

    site_queue(workspace)


@review.command("users")
@click.option("--workspace", type=click.Path(path_type=Path), required=True, help="Site workspace folder.")
def users_cmd(workspace: Path) -> None:
    """List the built-in accounts and the API tokens (by id; the tokens themselves are not kept)."""
    from ugafl.client.review.auth import Accounts, ApiTokens

    _workspace_with_queue(workspace)
    names = Accounts(workspace).users()
    click.echo(f"accounts ({len(names)}): {', '.join(names) or 'none'}")
    tokens = ApiTokens(workspace).listing()
    click.echo(f"API tokens ({len(tokens)}):")
    for t in tokens:
        click.echo(f"  {t['id']}  acts as {t['user']:<20} made {t['created']}  {t['label']}")


@review.command("remove-user")
@click.option("--workspace", type=click.Path(path_type=Path), required=True, help="Site workspace folder.")
@click.argument("name")
def remove_user(workspace: Path, name: str) -> None:
    """Remove a built-in account; its sessions end at their next request."""
    from ugafl.client.review.auth import Accounts

    _workspace_with_queue(workspace)
    Accounts(workspace).remove(name)
    click.echo(f"removed {name}")


@review.command("remove-token")
@click.option("--workspace", type=click.Path(path_type=Path), required=True, help="Site workspace folder.")
@click.argument("token_id")
def remove_token(workspace: Path, token_id: str) -> None:
    """Revoke an API token by its id (`ugafl review users` lists them)."""
    from ugafl.client.review.auth import ApiTokens

    _workspace_with_queue(workspace)
    entry = ApiTokens(workspace).remove(token_id)
    click.echo(f"revoked the token acting as {entry['user']} ({entry.get('label', '')})")


@review.command("add-token")
@click.option("--workspace", type=click.Path(path_type=Path), required=True, help="Site workspace folder.")
@click.argument("user")
@click.option("--label", default="", help="What the token is for (e.g. 'QuPath script on pc-123').")
def add_token(workspace: Path, user: str, label: str) -> None:
    """Make an API token acting as USER, for programs calling the review app's JSON API
    (`Authorization: Bearer TOKEN`; see api/openapi.json). Printed once; only its hash is kept."""
    from ugafl.client.review.auth import ApiTokens, check_user_name

    from ugafl.client.review.auth import Accounts

    check_user_name(user, "USER")
    _workspace_with_queue(workspace)
    accounts = Accounts(workspace).users()
    if accounts and user not in accounts:
        click.echo(f"warning: {user} is not one of this workspace's accounts ({', '.join(accounts)}); the token acts "
                   f"as {user} all the same (right for auth = proxy, where users are the proxy's)", err=True)
    click.echo(ApiTokens(workspace).add(user, label))
