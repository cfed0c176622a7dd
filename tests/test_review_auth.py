"""Who reviews, in each sign-in mode of the review app (a real server on 127.0.0.1, spoken to
with urllib): built-in accounts with scrypt hashes and session cookies, the hospital's proxy
header trusted only from the proxy's address, the OS account on loopback only; host names and a
URL prefix for serving behind a proxy. The audit's "who" is always the signed-in user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from review_helpers import make_review_workspace
from ugafl.client.queue.store import CorrectionQueue
from ugafl.client.review.auth import AuthSettings
from ugafl.client.review.server import ReviewConfigError, ReviewServer

UGAFL = Path(sys.executable).with_name("ugafl")
TAB = "c" * 16


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict | bytes, dict]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST", headers=headers or {})
    try:
        with OPENER.open(req, timeout=20) as response:
            status, payload, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, payload, got = error.code, error.read(), error.headers
    kind = got.get("Content-Type", "")
    return status, json.loads(payload) if kind == "application/json" else payload, got


def serve(ws: Path, **kwargs) -> ReviewServer:
    server = ReviewServer(ws, "127.0.0.1", 0, **kwargs)
    server.start_background()
    return server


def stop(server: ReviewServer) -> None:
    server.shutdown()
    server.server_close()


def add_user(ws: Path, name: str, password: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), "review", "add-user", "--workspace", str(ws), name, "--password-stdin", *extra],
                          input=password + "\n", capture_output=True, text=True, timeout=60)


def test_built_in_accounts_sign_in_and_the_audit_names_the_user(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9, 0.5])
    added = add_user(ws, "dr-jansen", "correct horse battery")
    assert added.returncode == 0 and "added dr-jansen" in added.stdout, added.stderr
    again = add_user(ws, "dr-jansen", "another password")
    assert again.returncode == 2 and "exists; --replace" in again.stderr
    short = add_user(ws, "dr-b", "short")
    assert short.returncode == 2 and "8 to 1024 characters" in short.stderr
    stored = (ws / "review" / "accounts.json").read_text()
    assert "correct horse" not in stored and json.loads(stored)["dr-jansen"]["scheme"] == "scrypt"
    assert oct(os.stat(ws / "review" / "accounts.json").st_mode & 0o777) == "0o600"

    server = serve(ws, auth=AuthSettings(mode="accounts"))
    try:
        status, _, headers = request(server.url)  # not signed in: to the sign-in page
        assert status == 303 and headers["Location"] == "login"
        status, page, _ = request(server.url + "login")
        assert status == 200 and server.token.encode() in page
        status, error, _ = request(server.url + "api/next", {"token": server.token, "tab": TAB})
        assert status == 401 and "sign in first" in error["error"]
        for user, password in (("dr-jansen", "wrong password!"), ("nobody", "correct horse battery"),
                               ("dr-jansen", "x" * 5000)):
            status, error, headers = request(server.url + "api/login", {"token": server.token, "user": user,
                                                                        "password": password})
            assert status == 401 and "wrong user name or password" in error["error"] and "Set-Cookie" not in headers
        status, error, _ = request(server.url + "api/login", {"token": "guess", "user": "dr-jansen",
                                                              "password": "correct horse battery"})
        assert status == 403  # the page token: another site cannot sign a browser in either
        status, body, headers = request(server.url + "api/login", {"token": server.token, "user": "dr-jansen",
                                                                   "password": "correct horse battery"})
        assert status == 200 and body == {"user": "dr-jansen"}
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # plain http here
        session = {"Cookie": cookie.split(";")[0]}
        # Through the hospital's TLS proxy (X-Forwarded-Proto from a trusted address) the cookie is Secure.
        _, _, proxied = request(server.url + "api/login", {"token": server.token, "user": "dr-jansen",
                                                           "password": "correct horse battery"},
                                headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in proxied["Set-Cookie"]
        status, me, _ = request(server.url + "api/me", headers=session)
        assert (status, me) == (200, {"user": "dr-jansen", "auth": "accounts"})
        status, page, _ = request(server.url, headers=session)
        assert status == 200 and b'<strong id="user">dr-jansen</strong>' in page
        status, opened, _ = request(server.url + "api/next", {"token": server.token, "tab": TAB, "reviewer": "dr-evil"},
                                    headers=session)
        assert status == 200 and opened["item"]["id"] == 1
        status, _, _ = request(server.url + "api/items/1/reject", {"token": server.token, "tab": TAB, "reason": "fold",
                                                                   "reviewer": "dr-evil"}, headers=session)
        assert status == 200
        status, _, _ = request(server.url + "api/logout", {"token": server.token}, headers=session)
        assert status == 200
        status, _, _ = request(server.url + "api/me", headers=session)  # the session ended on the server
        assert status == 401
    finally:
        stop(server)
    with CorrectionQueue(ws) as queue:
        assert [(e.action, e.who) for e in queue.history(1)][1:] == [("reject", "dr-jansen")]  # not the body's name


def test_the_proxy_header_is_believed_only_from_the_proxy(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9])
    elsewhere = serve(ws, auth=AuthSettings(mode="proxy", trusted_proxies=("127.0.0.2",)))
    try:  # the header comes from 127.0.0.1, which is not the proxy
        status, error, _ = request(elsewhere.url + "api/progress", headers={"X-Remote-User": "dr-jansen"})
        assert status == 401 and "X-Remote-User" in error["error"]
    finally:
        stop(elsewhere)
    server = serve(ws, auth=AuthSettings(mode="proxy", user_header="X-Auth-User"), host_names=("review.hospital.example",),
                   prefix="/review")
    try:
        assert server.url.endswith("/review/")
        status, me, _ = request(server.url + "api/me", headers={"X-Auth-User": "dr-visser"})
        assert (status, me) == (200, {"user": "dr-visser", "auth": "proxy"})
        status, _, _ = request(server.url + "api/me", headers={"X-Remote-User": "dr-visser"})
        assert status == 401  # another header than the configured one
        # Behind the proxy: the hospital's host name (any port), the app under its prefix.
        host = {"Host": "review.hospital.example", "X-Auth-User": "dr-visser"}
        status, page, _ = request(server.url, headers=host)
        assert status == 200 and b'href="static/review.css"' in page
        status, _, headers = request(server.url.rstrip("/"), headers=host)
        assert status == 303 and headers["Location"] == "/review/"
        status, _, _ = request(server.url, headers={**host, "Host": "evil.example"})
        assert status == 403
        status, _, _ = request(server.url.replace("/review/", "/api/me"), headers=host)
        assert status == 404  # nothing outside the prefix
    finally:
        stop(server)


def test_local_sign_in_serves_loopback_only(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9])
    with pytest.raises(ReviewConfigError, match='auth = "local" serves only loopback, not 0.0.0.0'):
        ReviewServer(ws, "0.0.0.0", 0)
    result = subprocess.run([str(UGAFL), "review", "--workspace", str(ws), "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr and 'auth = "local"' in result.stderr
    bad_prefix = subprocess.run([str(UGAFL), "review", "--workspace", str(ws), "--url-prefix", "review/../x",
                                 "--port", "0"], capture_output=True, text=True, timeout=60)
    assert bad_prefix.returncode == 2 and "url_prefix must look like /review" in bad_prefix.stderr
    no_queue = add_user(tmp_path / "elsewhere", "dr-a", "long enough password")
    assert no_queue.returncode == 2 and "no correction queue there" in no_queue.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_a_program_with_an_api_token_corrects_a_patch(tmp_path: Path) -> None:
    """Another client (a QuPath script, say) with an API token: no page, no page token, no cookie;
    the audit names the token's user. The OpenAPI document describes every route the app has."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9])
    made = subprocess.run([str(UGAFL), "review", "add-token", "--workspace", str(ws), "dr-script", "--label", "QuPath"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ugafl_") and token not in (ws / "review" / "tokens.json").read_text()
    server = serve(ws, auth=AuthSettings(mode="accounts"))
    try:
        bearer = {"Authorization": f"Bearer {token}"}
        status, me, _ = request(server.url + "api/me", headers=bearer)
        assert (status, me) == (200, {"user": "dr-script", "auth": "accounts"})
        assert request(server.url + "api/me", headers={"Authorization": "Bearer ugafl_guess"})[0] == 401
        status, opened, _ = request(server.url + "api/next", {"tab": "qupath01"}, headers=bearer)
        assert status == 200 and opened["item"]["id"] == 1
        mask = np.zeros((opened["item"]["height"], opened["item"]["width"]), np.uint8)
        mask[:10, :10] = 255
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        status, done, _ = request(server.url + "api/items/1/correction",
                                  {"tab": "qupath01", "mask_png": base64.b64encode(buf.getvalue()).decode()}, headers=bearer)
        assert status == 200 and done["progress"]["by"] == {"dr-script": {"corrected": 1, "rejected": 0}}
        # Without the token the same request needs a session and the page token.
        assert request(server.url + "api/next", {"tab": "qupath01"})[0] == 401

        status, spec, _ = request(server.url + "api/openapi.json")
        assert status == 200 and spec["openapi"].startswith("3.1")
        from starlette.routing import Route

        app = server._server.config.app.app  # the Starlette app inside the guard
        served = {r.path.replace("{item_id:int}", "{item_id}").replace("{level:int}", "{level}")
                  for r in app.routes if isinstance(r, Route) and r.path.startswith("/api/")}
        assert served == set(spec["paths"]), served ^ set(spec["paths"])
    finally:
        stop(server)
    with CorrectionQueue(ws) as queue:
        assert queue.history(1)[-1].who == "dr-script"


def test_account_administration_and_its_refusals(tmp_path: Path) -> None:
    """What an IT person does with accounts and tokens, and what is refused, one line each."""
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9])

    def ugafl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(UGAFL), *args], input=stdin, capture_output=True, text=True, timeout=60)

    assert add_user(ws, "Dr. Smit", "a good passphrase").returncode == 0
    for name, password, extra, message in (
            ("dr. smit", "a good passphrase", (), "user Dr. Smit exists; dr. smit would look the same in the audit"),
            ("dr-new", " " * 12, (), "8 to 1024 characters, not counting spaces"),
            ("dr-ghost", "a good passphrase", ("--replace",), "no user dr-ghost to set a new password for")):
        refused = add_user(ws, name, password, *extra)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    token_for_ghost = ugafl("review", "add-token", "--workspace", str(ws), "dr-ghost", "--label", "typo")
    assert token_for_ghost.returncode == 0 and "warning: dr-ghost is not one of this workspace's accounts" in token_for_ghost.stderr
    listed = ugafl("review", "users", "--workspace", str(ws))
    assert "accounts (1): Dr. Smit" in listed.stdout and "acts as dr-ghost" in listed.stdout and "typo" in listed.stdout
    token_id = next(line.split()[0] for line in listed.stdout.splitlines() if "dr-ghost" in line)
    assert ugafl("review", "remove-token", "--workspace", str(ws), token_id).returncode == 0
    assert "API tokens (0)" in ugafl("review", "users", "--workspace", str(ws)).stdout

    server = serve(ws, auth=AuthSettings(mode="accounts"))
    try:
        def sign_in(password: str) -> tuple[int, dict, dict]:
            return request(server.url + "api/login", {"token": server.token, "user": "Dr. Smit", "password": password})

        status, _, headers = sign_in("a good passphrase")
        session = {"Cookie": headers["Set-Cookie"].split(";")[0]}
        assert request(server.url + "api/me", headers=session)[0] == 200
        # A new password ends the sessions made with the old one; removing the user ends them too.
        assert add_user(ws, "Dr. Smit", "another good one", "--replace").returncode == 0
        assert request(server.url + "api/me", headers=session)[0] == 401
        status, _, headers = sign_in("another good one")
        session = {"Cookie": headers["Set-Cookie"].split(";")[0]}
        assert ugafl("review", "remove-user", "--workspace", str(ws), "Dr. Smit").returncode == 0
        assert request(server.url + "api/me", headers=session)[0] == 401
        # Guessing: five failures, then even the right password is refused for a while.
        assert add_user(ws, "Dr. Smit", "a good passphrase").returncode == 0
        assert [sign_in(f"guess {k}")[0] for k in range(5)] == [401] * 5
        status, error, _ = sign_in("a good passphrase")
        assert status == 429 and "too many failed sign-ins" in error["error"]
    finally:
        stop(server)

    typo = ugafl("review", "--workspace", str(tmp_path / "wsx"), "--port", "0")
    assert typo.returncode == 2 and "no such folder" in typo.stderr and not (tmp_path / "wsx").exists()
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "is a file" in ugafl("review", "--workspace", str(a_file), "--port", "0").stderr
    for prefix in ("/..", "/.", "/review/../x"):
        bad = ugafl("review", "--workspace", str(ws), "--url-prefix", prefix, "--port", "0")
        assert bad.returncode == 2 and "url_prefix must look like /review" in bad.stderr, prefix


def test_an_app_nobody_can_sign_in_to_is_warned_about(tmp_path: Path) -> None:
    """(The warning for plain HTTP off loopback is not tested here: tests bind loopback only.)"""
    import signal

    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9])
    proc = subprocess.Popen([str(UGAFL), "review", "--workspace", str(ws), "--host", "127.0.0.2", "--port", "0",
                             "--auth", "accounts"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "review app for" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "no accounts yet: nobody can sign in" in err and "plain HTTP" not in err, err  # 127.0.0.2 is loopback
