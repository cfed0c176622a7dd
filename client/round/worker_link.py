"""The ClientApp's side of the site's round worker (client.round.worker): one message forwarded
over the worker's Unix socket, its reply read back. It imports neither torch nor MONAI, so a
ClientApp process that forwards starts in about a second instead of the five its handlers'
imports take.

The socket is WS/federation/worker.sock (mode 0600: only the site's own user connects). One
connection carries one message: a frame of JSON (message type, round config, run id, the
ClientApp's start-up seconds), a frame of the arrays as an .npz (no pickles), then the reply the
same way: JSON ({"metrics": {...}} or {"error": reason}) and the arrays (empty unless trained).
A frame is an 8-byte big-endian length and that many bytes."""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ugafl.client.round.records import FEDERATION_DIR

SOCKET_NAME = "worker.sock"
MAX_HEADER_BYTES = 1 << 20  # the JSON frame: scalar settings and metrics
MAX_ARRAYS_BYTES = 4 << 30  # the weights of the largest model the federation runs, with room
CONNECT_TIMEOUT_S = 2.0
_LENGTH = struct.Struct(">Q")


class WorkerLost(ConnectionError):
    """The worker took the message and closed the connection before replying."""


class FrameTooLarge(ValueError):
    """A frame longer than its limit: refused before it is read."""


@dataclass(frozen=True)
class WorkerReply:
    """The worker's answer: metrics and (after training) arrays, or the error reason to send."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] | None = None
    error: str | None = None


def socket_path(workspace: Path) -> Path:
    return Path(workspace) / FEDERATION_DIR / SOCKET_NAME


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(data)))
    if data:  # sendall(b"") still calls send(): on a peer that has read the whole frame and closed, EPIPE
        sock.sendall(data)


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    """One frame, at most `limit` bytes (FrameTooLarge before reading more); EOFError if the
    peer closed before a whole frame arrived."""
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    if length > limit:
        raise FrameTooLarge(f"a frame of {length} bytes; at most {limit}")
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


def pack_arrays(arrays: Mapping[str, np.ndarray] | None) -> bytes:
    out = io.BytesIO()
    if arrays:
        np.savez(out, **{k: np.asarray(v) for k, v in arrays.items()})
    return out.getvalue()


def unpack_arrays(data: bytes) -> dict[str, np.ndarray] | None:
    if not data:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def ask(path: Path, message_type: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any],
        run_id: int, startup_s: float) -> WorkerReply | None:
    """The worker's reply to one message, or None when no worker listens at `path` (nothing was
    sent: the caller answers the message itself). WorkerLost if the worker took the message and
    went away without replying (the caller must not answer it again: the step may have run)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        sock.settimeout(None)  # a training step takes minutes; a dead worker closes the socket
        header = {"message-type": message_type, "config": dict(config), "run-id": int(run_id),
                  "startup-s": float(startup_s)}
        try:
            send_frame(sock, json.dumps(header).encode())
            send_frame(sock, pack_arrays(arrays))
            reply = json.loads(recv_frame(sock, MAX_HEADER_BYTES))
            out = unpack_arrays(recv_frame(sock, MAX_ARRAYS_BYTES))
        except (OSError, EOFError) as error:
            raise WorkerLost(f"the site's round worker went away during a {message_type} message: {error}") from None
        if "error" in reply:
            return WorkerReply({}, None, str(reply["error"]))
        return WorkerReply({k: float(v) for k, v in reply["metrics"].items()}, out)
    finally:
        sock.close()
