"""The site's round worker: a resident process with the handlers (client.round.handlers) and
torch already loaded, answering the messages its ClientApp forwards (client.round.worker_link).

Flower's deployment engine starts a fresh ClientApp process for every message; importing torch,
MONAI and the handlers costs it about five seconds on a CPU, more while the site's other
processes share the cores, three or four times a round. The site daemon runs this worker beside
its SuperNode; a ClientApp that finds no worker listening answers the message itself, as before.

One message at a time, in arrival order (the SuperNode sends one at a time). A failing step is
answered as the ClientApp would answer it (client.round.error_reply: a category and an error id)
and the worker goes on; a request it cannot read is logged and dropped.

    python -m ugafl.client.round.worker SITE_TOML
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

from ugafl.client.round.error_reply import error_reply
from ugafl.client.round.handlers import handle
from ugafl.client.round.worker_link import (MAX_ARRAYS_BYTES, MAX_HEADER_BYTES, FrameTooLarge, pack_arrays,
                                            recv_frame, send_frame, socket_path, unpack_arrays)
from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import UgaflError
from ugafl.common.log import get_logger

log = get_logger("worker")
READ_TIMEOUT_S = 60.0  # a request's frames arrive at once: the ClientApp has them in memory


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600. A socket file nobody listens on (a worker
    that was killed) is replaced; UgaflError if a worker is listening there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise UgaflError(f"a round worker is already listening at {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no moment in which another user could connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(4)
    return sock


def answer(site: SiteConfig, conn: socket.socket) -> str | None:
    """Read one message from `conn`, handle it, send the reply; the message type (None: unreadable)."""
    conn.settimeout(READ_TIMEOUT_S)
    try:
        header = json.loads(recv_frame(conn, MAX_HEADER_BYTES))
        arrays = unpack_arrays(recv_frame(conn, MAX_ARRAYS_BYTES)) or {}
        message_type = str(header["message-type"])
        config, run_id, startup = dict(header["config"]), int(header["run-id"]), float(header["startup-s"])
    except (OSError, EOFError, FrameTooLarge, ValueError, KeyError, TypeError) as error:
        log.warning("a request the worker cannot read was dropped: %s", error)
        return None
    conn.settimeout(None)
    log.info("answering a %s message", message_type)
    try:
        reply = handle(site, message_type, arrays, config, run_id, startup)
        out, arrays_out = {"metrics": reply.metrics}, reply.arrays
    except Exception as error:  # noqa: BLE001 - answered as the ClientApp would: a category and an id
        out, arrays_out = {"error": error_reply(error, message_type, site.workspace)}, None
    try:
        send_frame(conn, json.dumps(out).encode())
        send_frame(conn, pack_arrays(arrays_out))
    except OSError as error:
        log.warning("the %s reply could not be sent back (the ClientApp went away): %s", message_type, error)
    return message_type


def serve(config: str | Path, stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
    """Answer forwarded messages for the site of `config` until `stop` is set (or forever)."""
    site = SiteConfig.load(config)
    path = socket_path(site.workspace)
    server = bind(path)
    server.settimeout(0.5 if stop is not None else None)
    log.info("round worker listening at %s", path)
    if ready is not None:
        ready.set()
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                answer(site, conn)
    finally:
        server.close()
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    import signal
    import sys

    from ugafl.common.log import configure

    configure()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the supervisor's stop: the socket file is removed
    serve(sys.argv[1])
