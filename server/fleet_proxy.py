"""What hospitals reach: Debian's nginx on the coordinator's public port, terminating TLS with the
SuperLink's certificate and passing on the Fleet API only (`/v1/fleet/`, POST). Flower 1.41 serves
the Fleet, Control and runtime APIs on one port, and its Control API has no login without
Flower's enterprise plugin; so the SuperLink itself listens on the coordinator's loopback
(127.0.0.1, `control_port`), where only the coordinator's own commands (and an operator who logs
in to that machine, e.g. through an SSH tunnel) reach run control.

Everything nginx writes (pid, temporary files, access log) lives under the state folder, and it
logs errors to its output, which the coordinator's supervisor copies into coordinator.log: it runs
as any user, with no system service."""

from __future__ import annotations

import shutil
from pathlib import Path

from ugafl.common.atomic import atomic_write_text
from ugafl.common.errors import ConfigError

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")
LOOPBACK = "127.0.0.1"
UPSTREAM_NAME = "localhost"  # the name nginx checks in the SuperLink's certificate (the PKI always adds it)
MAX_BODY = "512m"  # one message's largest body: a model's weights with room to spare
IDLE_TIMEOUT_S = 300  # a request the SuperLink takes longer than this to answer is cut
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # nginx's temporary folders, all under state/nginx/tmp


def find_nginx() -> str:
    """The nginx program; ConfigError saying how to install it if there is none."""
    for candidate in NGINX_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which("nginx")
    if found:
        return found
    raise ConfigError("nginx not found: the coordinator serves hospitals through Debian's nginx "
                      "(`apt-get install nginx`, see deploy/DEPLOYMENT.md)")


def _listen(host: str, port: int) -> str:
    """nginx's `listen` address for `host` (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nginx_conf(folder: Path, host: str, port: int, control_port: int, pki: Path, access_log: Path) -> str:
    """The proxy's configuration: TLS on host:port, /v1/fleet/ (POST) passed to the SuperLink on
    127.0.0.1:control_port over TLS checked against the coordinator's CA, everything else 403."""
    upstream = f"https://{LOOPBACK}:{control_port}"
    temp = "\n".join(f"    {kind}_temp_path {folder / 'tmp' / kind};" for kind in TEMP_KINDS)
    return f"""# Written by `ugafl server start` (server/fleet_proxy.py) at each start; edits are lost.
worker_processes 1;
pid {folder / 'nginx.pid'};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
{temp}
    access_log {access_log};
    server_tokens off;
    client_max_body_size {MAX_BODY};
    server {{
        listen {_listen(host, port)} ssl;
        ssl_certificate {pki / 'superlink.pem'};
        ssl_certificate_key {pki / 'superlink.key'};
        ssl_protocols TLSv1.2 TLSv1.3;
        # Hospitals: the Fleet API, and nothing else. A SuperNode's own registration is refused
        # too (enrolment is the coordinator's: `ugafl server enrol`).
        location = /v1/fleet/register-node {{ return 403; }}
        location /v1/fleet/ {{
            limit_except POST {{ deny all; }}
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {pki / 'ca.pem'};
            proxy_ssl_verify on;
            proxy_ssl_name {UPSTREAM_NAME};
            proxy_request_buffering off;
            proxy_read_timeout {IDLE_TIMEOUT_S}s;
            proxy_send_timeout {IDLE_TIMEOUT_S}s;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
        # Run control (/v1/control/), the ServerApp's runtime API (/v1/runtime/) and anything else.
        location / {{ return 403; }}
    }}
}}
"""


def write_nginx_conf(state: Path, host: str, port: int, control_port: int, pki: Path) -> Path:
    """Write the proxy's folder (state/nginx: config, temporary folders) and return the config file."""
    folder = state / "nginx"
    for kind in TEMP_KINDS:
        (folder / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    atomic_write_text(conf, nginx_conf(folder, host, port, control_port, pki, state / "logs" / "fleet-access.log"))
    return conf


def nginx_argv(nginx: str, conf: Path) -> list[str]:
    """nginx in the foreground on `conf`, its prefix the config's folder, errors on its output."""
    return [nginx, "-e", "stderr", "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"]
