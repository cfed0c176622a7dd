"""The review app behind the hospital's proxy, for real: `deploy/hospital/nginx-review.conf` run by
Debian's nginx on loopback (TLS, the sign-in it ships with: HTTP basic authentication), `ugafl
review --auth proxy` behind it under /review/, and Debian's Chromium signed in through it. The
proxy names the user; a header a browser sends cannot; without signing in nothing is served; the
audit names the signed-in pathologist."""

from __future__ import annotations

import base64
import getpass
import json
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium, review_process
from deployment_kit import wait_for
from flower_deployment import free_port
from review_helpers import make_review_workspace
from test_review_browser import click_at, ctrl_y, ctrl_z, drag, keys, page, page_mask, wait_for as wait_for_page
from ugafl.client.queue.store import CorrectionQueue
from ugafl.server.fleet_proxy import find_nginx

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "hospital" / "nginx-review.conf"
UGAFL = Path(sys.executable).with_name("ugafl")
USER, PASSWORD = "dr-visser", "tumour border"


def local_conf(folder: Path, port: int, app_port: int, pki: Path, htpasswd: Path) -> Path:
    """The example with only its lines marked `test:` changed: loopback ports and files under `folder`."""
    values = {"user": getpass.getuser(), "pid": str(folder / "nginx.pid"), "access_log": str(folder / "access.log"),
              "listen": f"127.0.0.1:{port} ssl", "server_name": "127.0.0.1",
              "ssl_certificate": str(pki / "superlink.pem"), "ssl_certificate_key": str(pki / "superlink.key"),
              "auth_basic_user_file": str(htpasswd), "proxy_pass": f"http://127.0.0.1:{app_port}"}
    lines, changed = [], set()
    for line in EXAMPLE.read_text().splitlines():
        if match := re.match(r"^(\s*)(\w+) .*;\s+# test: (\w+)\b.*$", line):
            indent, directive, key = match.groups()
            assert directive == key, line
            line = f"{indent}{directive} {values[key]};"
            changed.add(key)
        lines.append(line)
    assert changed == set(values), set(values) - changed
    conf = folder / "nginx.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def fetch(url: str, ca: Path, headers: dict | None = None, source: str | None = None) -> tuple[int, bytes]:
    """GET over TLS checked against `ca`; `source`: the client's own address (another machine)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=20,
                                             source_address=(source, 0) if source else None)
    try:
        connection.request("GET", parts.path or "/", headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_pathologist_signed_in_at_the_proxy_corrects_a_patch(tmp_path: Path, synthetic_tiff) -> None:
    """The whole loop through the proxy: the patch in its slide, zoomed to full resolution and
    back, a polygon and a brush stroke, undo and redo, accept; the next one rejected with a reason."""
    import shutil

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(synthetic_tiff.path, inbox / "slide.tiff")
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.3, 0.8], slide="slide")
    pki = tmp_path / "pki"
    subprocess.run([str(UGAFL), "pki", "init-coordinator", "--dir", str(pki), "--names", "127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=PASSWORD, capture_output=True, text=True,
                            check=True).stdout.strip()
    htpasswd = tmp_path / "review.htpasswd"
    htpasswd.write_text(f"{USER}:{hashed}\n")
    port, app_port = free_port(), free_port()
    conf = local_conf(tmp_path, port, app_port, pki, htpasswd)
    app = subprocess.Popen([str(UGAFL), "review", "--workspace", str(ws), "--port", str(app_port), "--auth", "proxy",
                            "--host-name", "127.0.0.1", "--url-prefix", "/review", "--slides", str(inbox)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nginx = subprocess.Popen([find_nginx(), "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"https://127.0.0.1:{port}/review/"
    ca = pki / "ca.pem"
    signed_in = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    try:
        assert "review app for" in app.stdout.readline()
        wait_for("nginx", lambda: fetch(url, ca)[0] == 401, 30, 0.2)  # without signing in: nothing
        status, body = fetch(url + "api/me", ca, {**signed_in, "X-Remote-User": "dr-evil"})
        assert (status, json.loads(body)) == (200, {"user": USER, "auth": "proxy"})  # the proxy's name, not ours
        # A pathologist on another machine (127.0.0.3): the app trusts the proxy's connection, not the
        # browser's address that the proxy forwards.
        status, body = fetch(url + "api/me", ca, {**signed_in, "X-Forwarded-For": "127.0.0.1"}, source="127.0.0.3")
        assert (status, json.loads(body)) == (200, {"user": USER, "auth": "proxy"})
        status, _ = fetch(url + "api/me", ca, {"Authorization": "Basic " + base64.b64encode(b"dr-visser:guess").decode()})
        assert status == 401
        assert fetch(f"https://127.0.0.1:{port}/", ca, signed_in)[0] == 404  # only the app's prefix

        with chromium(tmp_path, "--ignore-certificate-errors") as driver:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": signed_in})  # as after the sign-in prompt
            driver.get(url)
            wait_for_page(driver, "ready", "2")
            assert f"Signed in as {USER}" in driver.find_element("id", "who").text
            assert not driver.find_element("id", "logout").is_displayed()  # the proxy signs out, not the app
            zoom = lambda: float(driver.execute_script("return document.getElementById('viewer').dataset.zoom"))  # noqa: E731
            fitted = zoom()
            keys(driver, "1")  # the scanner's full resolution, through the proxy's tiles
            WebDriverWait(driver, 30).until(lambda d: abs(zoom() - 1) < 0.02)
            keys(driver, "0")
            WebDriverWait(driver, 30).until(lambda d: abs(zoom() - fitted) < 0.02)
            keys(driver, "p")  # a polygon on the glass, top left
            for corner in ((4, 4), (30, 4), (30, 30), (4, 30)):
                click_at(driver, *corner)
            keys(driver, "\ue007")  # Enter closes it
            keys(driver, "b")
            drag(driver, (10, 120), (60, 120))  # a brush stroke on the glass ...
            with_stroke = page_mask(driver)
            ctrl_z(driver)  # ... undone ...
            assert not page_mask(driver)[119:122, 12:58].any()
            ctrl_y(driver)  # ... and redone
            assert (page_mask(driver) == with_stroke).all()
            keys(driver, "\ue007")  # accept
            now = wait_for_page(driver, "ready", "1")
            assert "Saved your correction of item 2" in now["message"], page(driver)
            assert "you: 1 corrected, 0 rejected" in now["progress"]
            keys(driver, "r")  # reject item 1, with a reason
            driver.find_element("id", "reject-note").send_keys("out of focus")
            keys(driver, "\ue007")
            now = wait_for_page(driver, "done")
            assert "you: 1 corrected, 1 rejected" in now["progress"]
    finally:
        for process in (nginx, app):
            process.terminate()
            print(process.args[0], process.communicate(timeout=30)[0][-3000:])  # their logs, for a failure
    with CorrectionQueue(ws) as queue:
        assert [(e.action, e.who) for e in queue.history(2)][1:] == [("claim", USER), ("correct", USER)]
        assert (queue.load_correction(2) == with_stroke).all() and with_stroke[5:30, 5:30].all()
        assert with_stroke[119:122, 12:58].all()
        assert [(e.action, e.who) for e in queue.history(1)][1:] == [("reject", USER)]
        assert queue.history(1)[-1].detail["reason"] == "not tumour tissue / artefact: out of focus"
    access = (tmp_path / "access.log").read_text()
    assert re.search(r'"POST /review/api/items/2/correction HTTP/1.1" 200 ', access), access[-1500:]
    assert f" {USER} [" in access  # nginx logged who
