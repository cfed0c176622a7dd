"""The coordinator's public side, as an attacker holding the public ca.pem sees it: `ugafl server
start` puts Debian's nginx on the public address, passing on the Fleet API only; run control, the
runtime API and a SuperNode's self-registration get 403 there, and the SuperLink's own port is not
open at the public address. The coordinator's own commands still reach run control on its
loopback. (The deployment kit test shows `flwr run`, `flwr log` and node registration refused
while real rounds pass through the proxy.)"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from deployment_kit import Kit, wait_for
from flower_deployment import free_port

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "flower_app"
PUBLIC = "127.0.0.2"


def _post(url: str, ca: Path, method: str = "POST") -> int:
    """The HTTP status of an empty request to `url` over TLS checked against `ca`."""
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/protobuf"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_hospitals_reach_the_fleet_api_and_nothing_else(tmp_path: Path) -> None:
    kit = Kit(tmp_path)
    port, control_port = free_port(), free_port()
    kit.ugafl("pki", "init-coordinator", "--dir", str(tmp_path / "pki"), "--names", PUBLIC)
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[coordinator]\nstate = "state"\npki = "pki"\napp = "{APP}"\nhost = "{PUBLIC}"\nport = {port}\n'
                      f'control_port = {control_port}\naddress = "{PUBLIC}:{port}"\n')
    ca, public = tmp_path / "pki" / "ca.pem", f"https://{PUBLIC}:{port}"
    try:
        kit.start("coordinator", "server", "start", "--config", str(config))
        wait_for("the SuperLink", lambda: "Uvicorn running on https" in kit.output("coordinator"), 60)
        wait_for("the proxy", lambda: _post(f"{public}/", ca) == 403, 60, 0.5)
        codes = {path: _post(public + path, ca) for path in (
            "/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node", "/v1/control/stream-logs",
            "/v1/runtime/acquire-task", "/v1/fleet/register-node", "/v1/fleet/get-run", "/v1/fleet/../control/list-runs")}
        get_fleet = _post(f"{public}/v1/fleet/get-run", ca, method="GET")
        try:  # the SuperLink's own port, at the public address: closed
            _post(f"https://{PUBLIC}:{control_port}/v1/control/list-runs", ca)
            direct = "answered"
        except urllib.error.URLError as error:
            direct = str(error.reason)
        sites = kit.ugafl("server", "sites", "--config", str(config), "--json")  # run control, on the loopback
        status = wait_for("the daemon's status", lambda: (s := json.loads((tmp_path / "state" / "status.json").read_text()))
                          and s["proxy_pid"] and s, 30)
    finally:
        left = kit.stop_all()
    assert not left, f"processes still running: {left}"
    refused = {p: c for p, c in codes.items() if p != "/v1/fleet/get-run"}
    assert set(refused.values()) == {403}, codes
    assert codes["/v1/fleet/get-run"] == 401, codes  # passed on: Flower itself asks for the node's signature
    assert get_fleet == 403  # the Fleet API is POST only
    assert "refused" in direct, direct
    assert json.loads(sites.stdout) == []
    assert status["proxy_pid"] and status["superlink_pid"]
    conf = (tmp_path / "state" / "nginx" / "nginx.conf").read_text()
    assert f"listen {PUBLIC}:{port} ssl;" in conf and f"proxy_pass https://127.0.0.1:{control_port};" in conf
