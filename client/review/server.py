"""HTTP glue for the review web app: serves the page (client/review/static/) and a small JSON API
over `ReviewService`, as a Starlette app on uvicorn.

Safety for a server on a pathologist's machine or behind a hospital's proxy:
- it binds 127.0.0.1 unless told otherwise, and answers only requests whose Host header names
  the address it serves or a configured host name (no DNS rebinding);
- every POST carries the random token embedded in the page, which another web site open in the
  same browser cannot read, so it cannot post corrections either;
- a request body is refused before it is read when its Content-Length is missing, malformed,
  negative or over the limit, and while it is read when it runs past its length or stalls;
  a connection that has not sent a whole request head within `HEAD_TIMEOUT_S` is closed; no
  request holds a thread while it is being received, and blocking work runs in anyio's bounded
  pool of worker threads;
- a mask's PNG size is checked from its header before it is decoded, and every text field has
  a length limit;
- every response says `frame-ancestors 'none'` (no framing), `nosniff`, `no-store`.

Who reviews comes from `auth.Identity` (the OS account, the hospital's proxy, or a built-in
account's session), never from the request body; every API call needs it (401 otherwise).

API, under the URL prefix (JSON bodies; all POSTs with "token" and, but for login, "tab"):
  POST /api/login                     {"user", "password"} -> session cookie (auth = "accounts")
  POST /api/logout
  GET  /api/me                        -> {"user": name, "auth": mode}
  POST /api/next                      -> {"item": {...} | null, "progress": {...}}: the tab opens it
  POST /api/items/<id>/claim          the pathologist starts correcting it (pending -> in review)
  POST /api/items/<id>/correction     {"mask_png": base64 PNG}  -> {"progress": {...}}
  POST /api/items/<id>/reject         {"reason": text}
  POST /api/items/<id>/skip
  GET  /api/progress, /api/items/<id>, /api/items/<id>/{image,model_mask,uncertainty}.png
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from ugafl.client.queue.store import QueueError
from ugafl.client.review.auth import SESSION_COOKIE, AuthSettings, Identity, Throttle
from ugafl.client.review.service import REJECT_REASONS, HeldByOtherTab, ReviewError, ReviewService
from ugafl.client.review.tiles import SlideTiles
from ugafl.common.errors import UgaflError
from ugafl.common.log import get_logger

log = get_logger("review")

MAX_BODY_BYTES = 16 << 20  # a 2048 x 2048 mask PNG, base64-encoded, is far below this
BODY_TIMEOUT_S = 30.0  # the longest wait for the next part of a request body
HEAD_TIMEOUT_S = 10.0  # the longest a connection may take to send a whole request head
MAX_REASON_CHARS = 500
MAX_ITEM_ID = 2**63 - 1  # SQLite's largest integer: any larger id names no item
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8",
          "login.js": "text/javascript; charset=utf-8",
          "openseadragon.min.js": "text/javascript; charset=utf-8"}  # OpenSeadragon 6.1.1 (BSD-3-Clause), see the Makefile
ACTIONS = ("claim", "correction", "reject", "skip")
PICTURES = {"image.png": "image", "model_mask.png": "model_mask", "uncertainty.png": "uncertainty"}
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # style-src: our stylesheet, and the one fixed rule OpenSeadragon 6.1.1 injects (allowed by its hash)
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; "
                                 b"style-src 'self' 'sha256-9xTiqzfwFaL2SGb1rmr8gysEwVVjIvqWAgmZgqFqpEE='; "
                                 b"script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
]


def _static(name: str) -> bytes:
    return resources.files("ugafl.client.review").joinpath("static", name).read_bytes()


@dataclass(frozen=True)
class ReviewLimits:
    """What one request may cost: body bytes, seconds between body parts, seconds for a request
    head, and open connections at once."""

    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    head_timeout_s: float = HEAD_TIMEOUT_S
    max_connections: int = 512  # open connections (uvicorn answers 503 beyond); worker threads are anyio's 40


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Guard:
    """ASGI middleware in front of every route: the Host check, the body's length and pace, and the
    security headers on every response (errors included)."""

    def __init__(self, app, allowed_hosts: set[str], host_names: set[str], limits: ReviewLimits):
        self.app, self.allowed_hosts, self.host_names, self.limits = app, allowed_hosts, host_names, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check(scope, headers)
        if refusal is not None:
            return await refusal(scope, receive, send_secured)
        declared = int(headers.get("content-length", "0") or 0)
        received = 0

        async def receive_bounded():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except asyncio.TimeoutError:
                raise _Refused(HTTPStatus.REQUEST_TIMEOUT, f"request body stalled for {self.limits.body_timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > declared:
                    raise _Refused(HTTPStatus.BAD_REQUEST, "request body longer than its Content-Length")
            return message

        try:
            await self.app(scope, receive_bounded, send_secured)
        except _Refused as refused:  # raised while the body was read: nothing has been answered yet
            log.warning("%s %s refused: %s", scope["method"], scope["path"], refused.message)
            await _error(refused.status, refused.message)(scope, receive, send_secured)

    def _check(self, scope, headers: dict[str, str]) -> Response | None:
        host = headers.get("host", "")
        if host not in self.allowed_hosts and host.rsplit(":", 1)[0].lower() not in self.host_names:
            return _error(HTTPStatus.FORBIDDEN, "unexpected Host header; open the address ugafl review printed")
        if scope["method"] != "POST":
            return None
        if "transfer-encoding" in headers:
            return _error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        raw = headers.get("content-length")
        if raw is None or not raw.strip().isdigit():  # isdigit: no sign, so no negative length
            return _error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required (a whole number of bytes)")
        if int(raw) > self.limits.max_body_bytes:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {self.limits.max_body_bytes} bytes")
        return None


class _HeadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request head: a connection that has
    not sent a whole request head `HEAD_TIMEOUT_S` after it opened (or after its last response)
    is closed, so half-sent requests cannot pile up."""

    head_timeout_s = HEAD_TIMEOUT_S

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self.loop.call_later(self.head_timeout_s, self._expire, self.cycle)

    def _expire(self, cycle_then) -> None:
        if self.cycle is cycle_then and not self.transport.is_closing():  # no new request since
            log.info("closing a connection that sent no whole request in %g s", self.head_timeout_s)
            self.transport.close()


def build_app(service: ReviewService, token: str, identity: Identity, allowed_hosts: set[str],
              host_names: set[str] = frozenset(), prefix: str = "", limits: ReviewLimits = ReviewLimits(),
              tiles: SlideTiles | None = None) -> _Guard:
    """The review app as an ASGI application, served under `prefix` ("" or "/something");
    `tiles` serves the slides behind the patches to the viewer."""
    mode = identity.settings.mode
    tiles = tiles or SlideTiles(None)
    throttle = Throttle()

    def with_slide(summary: dict) -> dict:
        """An item's JSON, with where the viewer finds its slide's tiles (null: the patch alone)."""
        return {**summary, "slide_dzi": f"api/slides/{summary['slide']}.dzi" if tiles.available(summary["slide"]) else None}

    def queued_slide(stem: str) -> bool:
        return service.queue.has_slide(stem)  # asked for every tile: one indexed row, not the slide's items

    def who(request: Request) -> str | None:
        return identity.user(request.client.host if request.client else None,
                             {k: v for k, v in request.headers.items()}, dict(request.cookies))

    def template(name: str, html: dict[str, str] | None = None, **values: str) -> Response:
        """A page of static/ with {{KEY}} filled in: `values` escaped, `html` as it is."""
        text = _static(name).decode()
        for key, value in {"TOKEN": token, "AUTH": mode, "PREFIX": prefix, **values}.items():
            text = text.replace("{{" + key + "}}", _html_attr(value))
        for key, value in (html or {}).items():
            text = text.replace("{{" + key + "}}", value)
        return Response(text, media_type="text/html; charset=utf-8")

    def page(request: Request) -> Response:
        user = who(request)
        if user is None:
            if mode == "accounts":
                return RedirectResponse("login", status_code=HTTPStatus.SEE_OTHER)
            return _error(HTTPStatus.UNAUTHORIZED, _unknown(mode, identity))
        reasons = "".join(f"<option>{_html_attr(r)}</option>" for r in REJECT_REASONS)
        return template("index.html", {"REASONS": reasons}, USER=user)

    def login_page(request: Request) -> Response:
        if mode != "accounts":
            return RedirectResponse("./", status_code=HTTPStatus.SEE_OTHER)
        return template("login.html")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _error(HTTPStatus.NOT_FOUND, f"no such resource {request.url.path}")
        return Response(_static(name), media_type=STATIC[name])

    async def body_of(request: Request) -> dict | Response:
        return await _body(request, token, bearer=identity.bearer(dict(request.headers.items())) is not None)

    def openapi_json(request: Request) -> Response:
        from ugafl.client.review.openapi import openapi

        return JSONResponse(openapi(prefix))

    def signed_in(fn):
        """The endpoint, for a request whose user is known; 401 otherwise."""
        async def endpoint(request: Request) -> Response:
            user = who(request)
            if user is None:
                return _error(HTTPStatus.UNAUTHORIZED, _unknown(mode, identity))
            return await fn(request, user)
        return endpoint

    async def me(request: Request, user: str) -> Response:
        return JSONResponse({"user": user, "auth": mode})

    async def progress(request: Request, user: str) -> Response:
        return await _in_thread(lambda: JSONResponse(service.progress()))

    async def item(request: Request, user: str) -> Response:
        return await _in_thread(lambda: JSONResponse(with_slide(service.item_json(_item_id(request)))))

    async def slide_dzi(request: Request, user: str) -> Response:
        name = request.path_params["name"]
        stem = name[:-len(".dzi")] if name.endswith(".dzi") else None

        def run() -> Response:
            xml = tiles.dzi(stem) if stem and queued_slide(stem) else None
            if xml is None:
                return _error(HTTPStatus.NOT_FOUND, f"no slide {name[:80]} to show")
            return Response(xml, media_type="application/xml")
        return await _in_thread(run)

    async def slide_tile(request: Request, user: str) -> Response:
        stem, level, tile = (request.path_params[k] for k in ("stem", "level", "tile"))
        col_row = tile.removesuffix(".jpeg").split("_")

        def run() -> Response:
            data = None
            if len(col_row) == 2 and all(v.isdigit() and len(v) < 9 for v in col_row) and level < 64 \
                    and queued_slide(stem):
                data = tiles.tile(stem, level, int(col_row[0]), int(col_row[1]))
            if data is None:
                return _error(HTTPStatus.NOT_FOUND, f"no tile {request.url.path[-80:]}")
            return Response(data, media_type="image/jpeg")
        return await _in_thread(run)

    async def picture(request: Request, user: str) -> Response:
        part = request.url.path.rsplit("/", 1)[1]
        return await _in_thread(lambda: Response(service.pictures(_item_id(request))[PICTURES[part]],
                                                 media_type="image/png"))

    async def login(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        if mode != "accounts":
            return _error(HTTPStatus.BAD_REQUEST, f"this review app knows its users from {mode} sign-in; no login")
        name, address = str(body.get("user"))[:100], request.client.host if request.client else "?"
        keys = (f"user:{name.lower()}", f"address:{address}")
        if throttle.blocked(*keys):
            log.warning("sign-in for %r from %s refused: too many failures", name, address)
            return _error(HTTPStatus.TOO_MANY_REQUESTS, f"too many failed sign-ins; wait {throttle.window_s / 60:g} minutes")
        user = await anyio_thread(lambda: identity.accounts.verify(body.get("user"), body.get("password")))
        if user is None:
            throttle.failed(*keys)
            log.warning("failed sign-in for %r from %s", name, address)
            return _error(HTTPStatus.UNAUTHORIZED, "wrong user name or password")
        log.info("%s signed in", user)
        response = JSONResponse({"user": user})
        session = identity.sessions.create(user, identity.accounts.fingerprint(user))
        response.set_cookie(SESSION_COOKIE, session, max_age=int(identity.sessions.seconds),
                            path=(prefix or "") + "/", httponly=True, samesite="strict", secure=_https(request, identity))
        return response

    async def logout(request: Request, user: str) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        identity.sessions.end(request.cookies.get(SESSION_COOKIE))
        if isinstance(body.get("tab"), str):
            await _in_thread(lambda: (service.close_tab(body["tab"]), JSONResponse({}))[1])
        response = JSONResponse({"user": None})
        response.delete_cookie(SESSION_COOKIE, path=(prefix or "") + "/")
        return response

    async def next_item(request: Request, user: str) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        def run() -> Response:
            item = service.next_item(body.get("tab"), user)
            return JSONResponse({"item": item and with_slide(item), "progress": service.progress(),
                                 "held_elsewhere": service.held_elsewhere(body.get("tab"))})
        return await _in_thread(run)

    async def action(request: Request, user: str) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        tab = body.get("tab")

        def run() -> Response:
            item_id = _item_id(request)
            if name == "claim":
                service.claim(tab, item_id, user)
            elif name == "correction":
                service.submit(tab, item_id, _decode_png(body.get("mask_png")), user)
            elif name == "reject":
                service.reject(tab, item_id, user, _reason(body.get("reason")))
            else:
                service.skip(tab, item_id, user)
            log.info("item %d: %s by %s", item_id, name, user)
            return JSONResponse({"progress": service.progress()})

        return await _in_thread(run)

    routes = [
        Route("/", page), Route("/index.html", page), Route("/login", login_page), Route("/static/{name}", static),
        Route("/api/login", login, methods=["POST"]), Route("/api/logout", signed_in(logout), methods=["POST"]),
        Route("/api/openapi.json", openapi_json), Route("/api/me", signed_in(me)), Route("/api/progress", signed_in(progress)),
        Route("/api/items/{item_id:int}", signed_in(item)),
        Route("/api/slides/{stem}_files/{level:int}/{tile}", signed_in(slide_tile)),
        Route("/api/slides/{name}", signed_in(slide_dzi)),
        *(Route(f"/api/items/{{item_id:int}}/{part}", signed_in(picture), methods=["GET"]) for part in PICTURES),
        Route("/api/next", signed_in(next_item), methods=["POST"]),
        *(Route(f"/api/items/{{item_id:int}}/{name}", signed_in(action), methods=["POST"]) for name in ACTIONS),
    ]
    if prefix:
        routes = [Route(prefix, lambda r: RedirectResponse(prefix + "/", status_code=HTTPStatus.SEE_OTHER)),
                  Mount(prefix, routes=routes)]
    app = Starlette(routes=routes, exception_handlers={
        404: lambda r, e: _error(HTTPStatus.NOT_FOUND, f"no such resource {r.url.path}"),
        405: lambda r, e: _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{r.method} is not allowed here")})
    return _Guard(app, allowed_hosts, {h.lower() for h in host_names}, limits)


def _unknown(mode: str, identity: Identity) -> str:
    if mode == "proxy":
        return (f"the hospital's sign-in did not say who you are (no {identity.settings.user_header} header from a "
                f"trusted proxy); open the review app through the hospital's address")
    return "sign in first"


def _https(request: Request, identity: Identity) -> bool:
    """Whether the browser reached us over HTTPS (directly, or through a trusted proxy that says so)."""
    if request.url.scheme == "https":
        return True
    proxied = request.client is not None and request.client.host in identity.settings.trusted_proxies
    return proxied and request.headers.get("x-forwarded-proto", "").lower() == "https"


async def anyio_thread(fn):
    import anyio

    return await anyio.to_thread.run_sync(fn)


async def _in_thread(fn) -> Response:
    """Run a blocking queue operation off the event loop, turning refusals into JSON errors."""
    import anyio

    return await anyio.to_thread.run_sync(lambda: _answer(fn))


def _answer(fn) -> Response:
    try:
        return fn()
    except HeldByOtherTab as error:
        return _error(HTTPStatus.CONFLICT, str(error))
    except QueueError as error:
        return _error(HTTPStatus.NOT_FOUND if "no item" in str(error) else HTTPStatus.CONFLICT, str(error))
    except UgaflError as error:
        return _error(HTTPStatus.BAD_REQUEST, str(error))


def _item_id(request: Request) -> int:
    item_id = request.path_params["item_id"]
    if item_id > MAX_ITEM_ID:
        raise QueueError(f"no item {str(item_id)[:20]}{'...' if len(str(item_id)) > 20 else ''}")
    return item_id


async def _body(request: Request, token: str, bearer: bool = False) -> dict | Response:
    """The request's JSON object, once its page token is checked (not for an API token's request:
    another site's page cannot send an Authorization header); else the refusal."""
    try:
        body = json.loads(await request.body() or b"{}")
    except _Refused as refused:  # too long or stalled (see _Guard)
        return _error(refused.status, refused.message)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return _error(HTTPStatus.BAD_REQUEST, "request body is not JSON")
    if not isinstance(body, dict):
        return _error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
    if not bearer and not secrets.compare_digest(str(body.get("token", "")), token):
        return _error(HTTPStatus.FORBIDDEN, "missing or wrong page token; reload the page")
    return body


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ReviewError("give a reason to reject the patch")
    if len(value) > MAX_REASON_CHARS:
        raise ReviewError(f"the reason is {len(value)} characters; at most {MAX_REASON_CHARS}")
    return value.strip()


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
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


class ReviewConfigError(UgaflError):
    """Review app settings that cannot work together."""


def check_prefix(prefix: str) -> str:
    """"" or "/name[/name...]": the path the app is served under (no trailing slash)."""
    prefix = (prefix or "").rstrip("/")
    if prefix and not all(part and part not in (".", "..") and all(c.isalnum() or c in "-_." for c in part)
                          for part in prefix[1:].split("/")) \
            or (prefix and not prefix.startswith("/")):
        raise ReviewConfigError(f"url_prefix must look like /review (letters, digits, - _ .), got {prefix!r}")
    return prefix


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


class ReviewServer:
    """The review app for `workspace` on (host, port), served by uvicorn; port 0 picks a free one
    (see `.url`). `serve_forever()` in the foreground, or `start_background()` and `shutdown()`.
    `slides`: the folder of the slides the patches come from (the site's inbox), for the viewer.
    `host_names`: the names a proxy or the browser may use besides the address itself (the Host
    header is checked); `prefix`: the path the app is served under ("" or "/review")."""

    def __init__(self, workspace: str | Path, host: str = "127.0.0.1", port: int = 0,
                 auth: AuthSettings = AuthSettings(), host_names: tuple[str, ...] = (), prefix: str = "",
                 limits: ReviewLimits = ReviewLimits(), slides: str | Path | None = None, hold_s: float | None = None):
        if auth.mode == "local" and not is_loopback(host):
            raise ReviewConfigError(f"auth = \"local\" serves only loopback, not {host}: with anyone else able to "
                                    f"reach it, use auth = \"accounts\" or \"proxy\"")
        prefix = check_prefix(prefix)
        self.identity = Identity(auth, workspace)
        self.service = ReviewService(workspace) if hold_s is None else ReviewService(workspace, hold_s)
        self.token = secrets.token_urlsafe(24)
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._socket = socket.socket(family, socket.SOCK_STREAM)
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)  # connections wait in the backlog until uvicorn serves them
        except BaseException:
            self.service.close()
            raise
        bound_port = self._socket.getsockname()[1]
        self.url = f"http://{_url_host(host)}:{bound_port}{prefix}/"
        self.allowed_hosts = {f"{h}:{bound_port}" for h in (_url_host(host), "127.0.0.1", "localhost", "[::1]")}
        self.tiles = SlideTiles(slides)
        app = build_app(self.service, self.token, self.identity, self.allowed_hosts, set(host_names), prefix, limits,
                        self.tiles)
        protocol = type("HeadDeadline", (_HeadDeadline,), {"head_timeout_s": limits.head_timeout_s})
        # proxy_headers off: uvicorn would otherwise take the client's address from a loopback
        # proxy's X-Forwarded-For, and the trust in `trusted_proxies` is about the connection itself.
        config = uvicorn.Config(app, http=protocol, ws="none", lifespan="off", log_config=None, access_log=False,
                                proxy_headers=False,
                                limit_concurrency=limits.max_connections, timeout_keep_alive=5,
                                h11_max_incomplete_event_size=16 << 10)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (uvicorn's handlers: requests under way finish), then
        return. In the main thread our own handler covers the moments before uvicorn installs its
        handlers, and takes the signal uvicorn raises again once it has stopped, so the caller
        ends normally."""
        if threading.current_thread() is not threading.main_thread():
            self._server.run(sockets=[self._socket])
            return
        def stop(*_) -> None:  # before uvicorn's own handlers are in place (and after): stop all the same
            self._server.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._server.run(sockets=[self._socket])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start_background(self) -> threading.Thread:
        """Serve on a daemon thread (for embedding and tests); stop with shutdown()."""
        self._thread = threading.Thread(target=self.serve_forever, name="review-server", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():  # until it listens, or failed
            time.sleep(0.01)
        return self._thread

    def shutdown(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def server_close(self) -> None:
        self._socket.close()
        self.tiles.close()
        self.service.close()
