"""The review app under attack, as a hostile page or a machine on the hospital's network would try
it, against a real server process (uvicorn, on 127.0.0.1): each attack is refused with the right
status, the queue is unchanged, the server's memory grows by less than 50 MB over all of them,
and it still answers a pathologist's requests afterwards."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployment_kit import wait_for
from review_helpers import make_review_workspace
from test_queue_store import snapshot

TAB = "t" * 16
SERVE = """
import sys
from ugafl.client.review.server import ReviewLimits, ReviewServer
server = ReviewServer(sys.argv[1], "127.0.0.1", 0, limits=ReviewLimits(head_timeout_s=2, body_timeout_s=2))
print(server.url, server.token, flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(process, port, token, workspace) of a review server over a queue of three patches."""
    ws = tmp_path_factory.mktemp("review") / "ws"
    make_review_workspace(ws, [0.2, 0.9, 0.5])
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(ws)], stdout=subprocess.PIPE, text=True)
    url, token = process.stdout.readline().split()
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    yield process, port, token, ws
    process.terminate()
    process.wait(timeout=30)


def memory_kib(pid: int, field: str) -> int:
    """VmRSS or VmHWM (peak) of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def raw(port: int, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, dict | str]:
    """Send a hand-made request; (status, JSON body or text)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and _complete(data):
                break
    status = int(data.split(b" ", 2)[1])
    text = data.split(b"\r\n\r\n", 1)[1].decode(errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _complete(data: bytes) -> bool:
    head, body = data.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def post(port: int, path: str, payload: dict | bytes, **headers) -> tuple[int, dict | str]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    extra = "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in headers.items())
    if "content_length" not in headers:
        extra += f"Content-Length: {len(body)}\n"
    return raw(port, f"POST {path} HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: application/json\n"
                     f"Connection: close\n{extra}", body)


def get(port: int, path: str, host: str | None = None) -> tuple[int, dict | str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace"), head.decode()


def png_b64(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def test_every_attack_is_refused_and_memory_stays_flat(served) -> None:
    process, port, token, ws = served
    me = {"token": token, "tab": TAB}
    status, opened = post(port, "/api/next", me)
    assert status == 200 and opened["item"]["id"] == 2
    before, peak_before = snapshot(ws), memory_kib(process.pid, "VmHWM")

    results = {}
    # A negative Content-Length used to pass the size check.
    results["negative length"] = post(port, "/api/next", me, content_length=-1)
    results["non-numeric length"] = post(port, "/api/next", me, content_length="12abc")
    results["no length"] = raw(port, f"POST /api/next HTTP/1.1\nHost: 127.0.0.1:{port}\nConnection: close\n")
    results["chunked body"] = post(port, "/api/next", b"0\r\n\r\n", transfer_encoding="chunked", content_length=0)
    # 17 MiB announced: refused from the header, before any of it is read (none is sent).
    results["oversized body"] = raw(port, f"POST /api/next HTTP/1.1\nHost: 127.0.0.1:{port}\n"
                                          f"Content-Length: {17 << 20}\nConnection: close\n")
    # A 12000 x 12000 PNG of a few KB: refused from its header, never decoded.
    bomb = png_b64(12000, 12000)
    assert len(bomb) < 1 << 20  # 186 KB of base64 that would decode to 144 MB of pixels
    results["decompression bomb"] = post(port, "/api/items/2/correction", {**me, "mask_png": bomb})
    results["long reason"] = post(port, "/api/items/2/reject", {**me, "reason": "x" * 100_000})
    results["huge item id"] = post(port, f"/api/items/{10 ** 40}/skip", me)
    results["huge item id, GET"] = get(port, f"/api/items/{10 ** 40}")[:2]
    results["deep JSON"] = post(port, "/api/next", b"[" * 100_000)
    results["foreign host"] = get(port, "/", host="evil.example")[:2]

    expected = {
        "negative length": (400, "Invalid HTTP request"),  # refused by the HTTP parser (h11) already
        "non-numeric length": (400, "Invalid HTTP request"),
        "no length": (411, "Content-Length required"),
        "chunked body": (411, "not chunked"),
        "oversized body": (413, "request body over 16777216 bytes"),
        "decompression bomb": (400, "mask is 12000x12000 (width x height), the patch is 128x128"),
        "long reason": (400, "the reason is 100000 characters; at most 500"),
        "huge item id": (404, "no item 10000000000000000000..."),
        "huge item id, GET": (404, "no item 10000000000000000000..."),
        "deep JSON": (400, "not JSON"),
        "foreign host": (403, "unexpected Host header"),
    }
    for name, (status, message) in expected.items():
        got_status, body = results[name]
        text = body["error"] if isinstance(body, dict) else body
        assert (got_status, message in text) == (status, True), (name, got_status, text)
    assert snapshot(ws) == before
    grown = (memory_kib(process.pid, "VmHWM") - peak_before) / 1024
    print(f"peak memory grew {grown:.1f} MB over the attacks")
    assert grown < 50, grown
    # The pathologist's tab still works: the item it opened is still its own.
    assert post(port, "/api/next", me)[1]["item"]["id"] == 2


def test_half_sent_requests_are_dropped_and_others_are_served_meanwhile(served) -> None:
    process, port, token, ws = served
    heads, bodies = [], []
    for _ in range(100):  # request heads that never finish
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /api/next HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        heads.append(sock)
    for _ in range(5):  # bodies that never finish
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"POST /api/next HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000\r\n\r\n{{".encode())
        bodies.append(sock)
    started = time.monotonic()
    status, progress, _ = get(port, "/api/progress")  # a pathologist's request is served meanwhile
    assert status == 200 and json.loads(progress)["total"] == 3
    assert time.monotonic() - started < 2  # answered while all 105 are still held open

    def closed(sock: socket.socket) -> bytes | None:
        sock.settimeout(0.2)
        try:
            return sock.recv(65536) or b"closed"
        except TimeoutError:
            return None

    # The head deadline (2 s here, 10 s by default) closes the heads; stalled bodies get 408.
    wait_for("the half-sent heads to be closed", lambda: all(closed(s) == b"closed" for s in heads), 30, 0.5)
    replies = [wait_for("a stalled body's reply", lambda s=s: closed(s), 30, 0.1) for s in bodies]
    assert all(r.startswith(b"HTTP/1.1 408 ") and b"stalled" in r for r in replies), replies[0][:200]
    for sock in heads + bodies:
        sock.close()


def test_the_page_cannot_be_framed(served) -> None:
    _, port, _, _ = served
    status, page, head = get(port, "/")
    assert status == 200 and "ugafl review" in page
    lowered = head.lower()
    assert "frame-ancestors 'none'" in lowered and "x-frame-options: deny" in lowered
    assert "x-content-type-options: nosniff" in lowered and "cache-control: no-store" in lowered
    status, _, head = get(port, "/api/items/999")  # errors carry them too
    assert status == 404 and "frame-ancestors 'none'" in head.lower()


def test_the_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`ugafl review` as the site daemon runs it: serves, and SIGTERM ends it with exit code 0."""
    import signal
    import urllib.request

    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.5])
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ugafl")), "review", "--workspace", str(ws), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert "review app for" in first, first
        url = first.split(": ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "api/progress", timeout=10) as response:
            assert json.loads(response.read())["pending"] == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "review app stopped" in out, out
