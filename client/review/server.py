"""HTTP glue for the review web app: serves the page (client/review/static/) and a small JSON API
over `ReviewService`. Standard library only; one thread per request.

Safety for a server on a pathologist's machine: it binds 127.0.0.1 unless told otherwise; it
answers only requests whose Host header names the address it serves (no DNS rebinding); and
every POST must carry the random token embedded in the page, which another web site open in the
same browser cannot read, so it cannot post corrections either.

API (JSON bodies, all POSTs with "token", "tab" and "reviewer"):
  POST /api/next                      -> {"item": {...} | null, "progress": {...}}
  POST /api/items/<id>/correction     {"mask_png": base64 PNG}  -> {"progress": {...}}
  POST /api/items/<id>/reject         {"reason": text}
  POST /api/items/<id>/skip
  GET  /api/progress, /api/items/<id>, /api/items/<id>/{image,model_mask,uncertainty}.png
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from ugafl.client.review.service import REJECT_REASONS, HeldByOtherTab, ReviewError, ReviewService
from ugafl.client.queue.store import QueueError
from ugafl.common.errors import UgaflError
from ugafl.common.log import get_logger

log = get_logger("review")

MAX_BODY_BYTES = 16 << 20  # a 2048 x 2048 mask PNG, base64-encoded, is far below this
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
PICTURES = {"image.png": "image", "model_mask.png": "model_mask", "uncertainty.png": "uncertainty"}
_ITEM_PATH = re.compile(r"^/api/items/(\d+)(?:/([a-z_]+(?:\.png)?))?$")


def _static(name: str) -> bytes:
    return resources.files("ugafl.client.review").joinpath("static", name).read_bytes()


class ReviewServer(ThreadingHTTPServer):
    """The review app for `workspace` on (host, port); port 0 picks a free one (see `.url`)."""

    daemon_threads = True

    def __init__(self, workspace: str | Path, host: str = "127.0.0.1", port: int = 0, reviewer: str = ""):
        self.service = ReviewService(workspace)
        self.token = secrets.token_urlsafe(24)
        self.default_reviewer = reviewer
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self.service.close()
            raise
        bound_host, bound_port = self.server_address[:2]
        self.url = f"http://{_url_host(host)}:{bound_port}/"
        self.allowed_hosts = {f"{h}:{bound_port}" for h in (_url_host(host), "127.0.0.1", "localhost", "[::1]")}

    def server_close(self) -> None:
        super().server_close()
        self.service.close()

    def start_background(self) -> threading.Thread:
        """Serve on a daemon thread (for embedding and tests); stop with shutdown()."""
        thread = threading.Thread(target=self.serve_forever, name="review-server", daemon=True)
        thread.start()
        return thread


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "ugafl-review"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # route http.server's lines to our logger
        log.debug("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------------ responses

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        if self.headers.get("Host", "") in self.server.allowed_hosts:
            return True
        self._error(HTTPStatus.FORBIDDEN, "unexpected Host header; open the address ugafl review printed")
        return False

    # ------------------------------------------------------------------ GET

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        service = self.server.service
        try:
            if path in ("/", "/index.html"):
                page = _static("index.html").decode()
                page = page.replace("{{TOKEN}}", self.server.token)
                page = page.replace("{{REVIEWER}}", _html_attr(self.server.default_reviewer))
                page = page.replace("{{REASONS}}", "".join(f"<option>{_html_attr(r)}</option>" for r in REJECT_REASONS))
                self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
            elif path.startswith("/static/") and path[len("/static/"):] in STATIC:
                name = path[len("/static/"):]
                self._send(HTTPStatus.OK, _static(name), STATIC[name])
            elif path == "/api/progress":
                self._json(HTTPStatus.OK, service.progress())
            elif match := _ITEM_PATH.match(path):
                item_id, part = int(match.group(1)), match.group(2)
                if part is None:
                    self._json(HTTPStatus.OK, service.item_json(item_id))
                elif part in PICTURES:
                    self._send(HTTPStatus.OK, service.pictures(item_id)[PICTURES[part]], "image/png")
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such resource {path}")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such resource {path}")
        except QueueError as error:
            self._error(HTTPStatus.NOT_FOUND if "no item" in str(error) else HTTPStatus.CONFLICT, str(error))
        except UgaflError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))

    # ------------------------------------------------------------------ POST

    def _body(self) -> dict | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return None
        if length > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
            self.close_connection = True
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, "request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
            return None
        if not secrets.compare_digest(str(body.get("token", "")), self.server.token):
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong page token; reload the page")
            return None
        reviewer = body.get("reviewer")
        if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > 100:
            self._error(HTTPStatus.BAD_REQUEST, "enter your name (1 to 100 characters) before reviewing")
            return None
        body["reviewer"] = reviewer.strip()
        return body

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        body = self._body()
        if body is None:
            return
        service, path = self.server.service, self.path.split("?", 1)[0]
        tab, reviewer = body.get("tab"), body["reviewer"]
        try:
            if path == "/api/next":
                item = service.next_item(tab, reviewer)
                self._json(HTTPStatus.OK, {"item": item, "progress": service.progress()})
                return
            match = _ITEM_PATH.match(path)
            if match is None or match.group(2) not in ("correction", "reject", "skip"):
                self._error(HTTPStatus.NOT_FOUND, f"no such action {path}")
                return
            item_id, action = int(match.group(1)), match.group(2)
            if action == "correction":
                service.submit(tab, item_id, _decode_png(body.get("mask_png")), reviewer)
            elif action == "reject":
                reason = body.get("reason")
                if not isinstance(reason, str) or not reason.strip():
                    raise ReviewError("give a reason to reject the patch")
                service.reject(tab, item_id, reviewer, reason.strip())
            else:
                service.skip(tab, item_id, reviewer)
            log.info("item %d: %s by %s", item_id, action, reviewer)
            self._json(HTTPStatus.OK, {"progress": service.progress()})
        except HeldByOtherTab as error:
            self._error(HTTPStatus.CONFLICT, str(error))
        except QueueError as error:
            self._error(HTTPStatus.NOT_FOUND if "no item" in str(error) else HTTPStatus.CONFLICT, str(error))
        except UgaflError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))


def _decode_png(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise ReviewError("mask_png missing: send the corrected mask as a base64 PNG")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReviewError("mask_png is not valid base64") from None


def _html_attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;"))
