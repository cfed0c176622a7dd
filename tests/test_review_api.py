"""The review app's HTTP API, served by a real ReviewServer on 127.0.0.1 and spoken to with
urllib: priority order, tab ownership, the page token and Host checks, bad corrections refused
with one clear message and the queue left unchanged, and who reviews: the user named by a trusted
proxy (here), never a name in the request."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from review_helpers import SIZE, make_review_workspace, ring_mask
from test_queue_store import snapshot
from ugafl.client.queue.store import CorrectionQueue
from ugafl.client.review.auth import AuthSettings
from ugafl.client.review.server import ReviewServer

TAB_A, TAB_B = "a" * 16, "b" * 16


@pytest.fixture
def server(tmp_path: Path):
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.2, 0.9, 0.5])  # ids 1, 2, 3: priority order 2, 3, 1
    srv = ReviewServer(ws, "127.0.0.1", 0, AuthSettings(mode="proxy"))  # the test speaks as the proxy
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv: ReviewServer, path: str, body: dict | None = None, *, host: str | None = None,
         token: str | None = None, user: str | None = "dr-test") -> tuple[int, dict | bytes]:
    data = None
    if body is not None:
        data = json.dumps({"token": srv.token if token is None else token, **body}).encode()
    request = urllib.request.Request(srv.url.rstrip("/") + path, data=data, method="POST" if data else "GET")
    if host:
        request.add_header("Host", host)
    if user is not None:
        request.add_header("X-Remote-User", user)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, payload, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers["Content-Type"]
    return status, json.loads(payload) if kind == "application/json" else payload


def png(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_page_and_pictures_are_served(server: ReviewServer) -> None:
    status, page = call(server, "/")
    assert status == 200 and server.token.encode() in page and b'<strong id="user">dr-test</strong>' in page
    status, image = call(server, "/api/items/1/image.png")
    assert status == 200 and Image.open(io.BytesIO(image)).size == (SIZE, SIZE)
    status, unc = call(server, "/api/items/1/uncertainty.png")
    colours = np.asarray(Image.open(io.BytesIO(unc)).convert("RGB"))
    edge = colours[SIZE // 2, SIZE // 2 + 40 - 1].astype(int)  # on the outer edge: bright
    far = colours[2, 2].astype(int)  # far from every edge: dark
    assert edge.sum() > far.sum() + 200, (edge, far)
    status, error = call(server, "/api/items/99")
    assert status == 404 and "no item 99" in error["error"]


def test_next_follows_priority_and_a_reload_gets_the_same_item(server: ReviewServer) -> None:
    status, first = call(server, "/api/next", {"tab": TAB_A})
    assert status == 200 and first["item"]["id"] == 2 and first["item"]["score"] == pytest.approx(0.9)
    assert first["progress"]["in_review"] == 0 and first["progress"]["pending"] == 3  # opened, not claimed
    _, again = call(server, "/api/next", {"tab": TAB_A})  # a reload of the same tab
    assert again["item"]["id"] == 2
    _, other = call(server, "/api/next", {"tab": TAB_B})  # another tab never gets the same item
    assert other["item"]["id"] == 3
    # The claim is recorded when the pathologist starts correcting: their first stroke.
    status, claimed = call(server, "/api/items/2/claim", {"tab": TAB_A})
    assert status == 200 and claimed["progress"]["in_review"] == 1
    status, error = call(server, "/api/items/2/claim", {"tab": TAB_B})
    assert status == 409 and "open in another tab" in error["error"]
    with CorrectionQueue(server.service.queue.workspace) as q:
        assert [(e.action, e.who) for e in q.history(2)] == [("add", q.history(2)[0].who), ("claim", "dr-test")]


def test_accept_reject_skip_move_the_queue(server: ReviewServer) -> None:
    call(server, "/api/next", {"tab": TAB_A})
    mask = ring_mask().astype(np.uint8) * 255
    mask[:10, :10] = 255
    status, body = call(server, "/api/items/2/correction", {"tab": TAB_A, "mask_png": png(mask)})
    assert status == 200 and body["progress"]["corrected"] == 1
    _, nxt = call(server, "/api/next", {"tab": TAB_A})
    assert nxt["item"]["id"] == 3
    status, body = call(server, "/api/items/3/skip", {"tab": TAB_A})
    assert status == 200 and body["progress"]["pending"] == 2
    _, nxt = call(server, "/api/next", {"tab": TAB_A})  # the skipped item 3 is passed over
    assert nxt["item"]["id"] == 1
    status, error = call(server, "/api/items/1/reject", {"tab": TAB_A, "reason": "  "})
    assert status == 400 and "reason" in error["error"]
    status, _ = call(server, "/api/items/1/reject", {"tab": TAB_A, "reason": "artefact"})
    assert status == 200
    _, nxt = call(server, "/api/next", {"tab": TAB_A})
    assert nxt["item"] is None and nxt["progress"] == {"pending": 1, "in_review": 0, "corrected": 1, "rejected": 1,
                                                       "done": 2, "total": 3,
                                                       "by": {"dr-test": {"corrected": 1, "rejected": 1}}}
    with CorrectionQueue(server.service.queue.workspace) as q:
        assert (q.load_correction(2) == (mask > 0)).all()
        assert q.get(2).reviewer == "dr-test" and q.get(3).state == "pending"
        assert q.history(1)[-1].detail["reason"] == "artefact"
    _, other = call(server, "/api/next", {"tab": TAB_B})  # skipping is per tab: another tab still gets it
    assert other["item"]["id"] == 3


def bad_corrections():
    good = ring_mask().astype(np.uint8) * 255
    grey = good.copy()
    grey[5, 5] = 128
    return [
        ("wrong size", {"mask_png": png(good[:-1])}, 400, "mask is 128x127 (width x height), the patch is 128x128"),
        ("values other than 0/1/255", {"mask_png": png(grey)}, 400, "mask has values 128"),
        ("colour image", {"mask_png": png(np.dstack([good, good * 0, good]))}, 400, "must be greyscale"),
        ("not a PNG", {"mask_png": base64.b64encode(b"hello").decode()}, 400, "cannot read as an image"),
        ("not base64", {"mask_png": "***"}, 400, "not valid base64"),
        ("no mask", {}, 400, "mask_png missing"),
        ("another tab's item", {"tab": TAB_B, "mask_png": png(good)}, 409, "open in another tab"),
        ("bad tab id", {"tab": "x", "mask_png": png(good)}, 400, "tab id"),
    ]


@pytest.mark.parametrize("name, body, status, message", bad_corrections(), ids=[c[0] for c in bad_corrections()])
def test_bad_corrections_are_refused_and_change_nothing(server: ReviewServer, name, body, status, message) -> None:
    call(server, "/api/next", {"tab": TAB_A})
    call(server, "/api/next", {"tab": TAB_B})
    ws = server.service.queue.workspace
    before = snapshot(ws)
    got_status, error = call(server, "/api/items/2/correction", {"tab": TAB_A, **body})
    assert (got_status, message in error["error"]) == (status, True), error
    assert snapshot(ws) == before


def test_an_item_corrected_elsewhere_is_not_overwritten(server: ReviewServer) -> None:
    call(server, "/api/next", {"tab": TAB_A})
    good = ring_mask().astype(np.uint8) * 255
    with CorrectionQueue(server.service.queue.workspace) as q:  # e.g. a QuPath import meanwhile
        q.submit_correction(2, good, "dr-qupath")
        before = snapshot(q.workspace)
    status, error = call(server, "/api/items/2/correction", {"tab": TAB_A, "mask_png": png(good * 0)})
    assert status == 409 and "already corrected by dr-qupath" in error["error"]
    assert snapshot(server.service.queue.workspace) == before


@pytest.mark.parametrize("case", ["no token", "wrong token", "foreign host", "no user", "a name in the body",
                                  "a user name too long"])
def test_requests_without_the_page_token_or_from_elsewhere_are_refused(server: ReviewServer, case: str) -> None:
    ws = server.service.queue.workspace
    before = snapshot(ws)
    if case == "foreign host":  # DNS rebinding: a page on evil.example resolving to 127.0.0.1
        status, error = call(server, "/api/next", {"tab": TAB_A}, host="evil.example:80")
        assert status == 403 and "Host" in error["error"]
        status, _ = call(server, "/", host="evil.example:80")
        assert status == 403
    elif case in ("no user", "a name in the body"):  # a name typed into a request is not an identity
        status, error = call(server, "/api/next", {"tab": TAB_A, "reviewer": "dr-test", "user": "dr-test"}, user=None)
        assert status == 401 and "did not say who you are" in error["error"]
        status, error = call(server, "/api/items/1/image.png", user=None)  # patient data: pictures too
        assert status == 401
    elif case == "a user name too long":
        status, error = call(server, "/api/next", {"tab": TAB_A}, user="x" * 101)
        assert status == 401
    else:
        status, error = call(server, "/api/next", {"tab": TAB_A}, token="" if case == "no token" else "guess")
        assert status == 403 and "token" in error["error"]
    assert snapshot(ws) == before


def test_the_viewer_gets_tiles_of_queued_slides_only(tmp_path: Path, synthetic_tiff) -> None:
    """Deep Zoom of the slides the queue's patches come from: the descriptor and tiles in level-0
    frame for a queued slide; nothing for another slide in the folder, a bad address, or a
    request without a user."""
    import shutil
    import xml.etree.ElementTree as ET

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(synthetic_tiff.path, inbox / "slide.tiff")
    shutil.copy(synthetic_tiff.path, inbox / "other.tiff")  # in the folder, but no item comes from it
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.5], slide="slide")
    srv = ReviewServer(ws, "127.0.0.1", 0, AuthSettings(mode="proxy"), slides=inbox)
    srv.start_background()
    try:
        status, item = call(srv, "/api/items/1")
        assert status == 200 and item["slide_dzi"] == "api/slides/slide.dzi"
        status, xml = call(srv, "/api/slides/slide.dzi")
        size = ET.fromstring(xml).find("{http://schemas.microsoft.com/deepzoom/2008}Size").attrib
        assert status == 200 and (size["Width"], size["Height"]) == ("2048", "1536")
        status, tile = call(srv, "/api/slides/slide_files/11/0_0.jpeg")  # level 11: 2048 px wide, 9 x 7 tiles
        assert status == 200 and Image.open(io.BytesIO(tile)).size == (255, 255)
        for path in ("/api/slides/other.dzi", "/api/slides/other_files/11/0_0.jpeg", "/api/slides/slide_files/11/99_0.jpeg",
                     "/api/slides/slide_files/40/0_0.jpeg", "/api/slides/slide_files/11/0_0_0.jpeg",
                     "/api/slides/..%2Fslide.dzi", "/api/slides/slide_files/11/-1_0.jpeg"):
            assert call(srv, path)[0] == 404, path
        assert call(srv, "/api/slides/slide.dzi", user=None)[0] == 401
    finally:
        srv.shutdown()
        srv.server_close()
    srv = ReviewServer(ws, "127.0.0.1", 0, AuthSettings(mode="proxy"))  # no slides folder: the patch alone
    srv.start_background()
    try:
        assert call(srv, "/api/items/1")[1]["slide_dzi"] is None
        assert call(srv, "/api/slides/slide.dzi")[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_patch_only_looked_at_is_freed_after_the_tab_goes_idle_or_signs_out(tmp_path: Path) -> None:
    """A tab that opened a patch without starting to correct it does not keep it from others for
    ever: after `hold_s` without a request from that tab, or when it signs out, another gets it."""
    ws = tmp_path / "ws"
    make_review_workspace(ws, [0.9])
    srv = ReviewServer(ws, "127.0.0.1", 0, AuthSettings(mode="proxy"), hold_s=1.0)
    srv.start_background()
    try:
        assert call(srv, "/api/next", {"tab": TAB_A})[1]["item"]["id"] == 1
        _, other = call(srv, "/api/next", {"tab": TAB_B}, user="dr-b")
        assert other["item"] is None and other["held_elsewhere"] == 1 and other["progress"]["pending"] == 1
        from deployment_kit import wait_for

        got = wait_for("the idle tab's patch to be freed",
                       lambda: call(srv, "/api/next", {"tab": TAB_B}, user="dr-b")[1]["item"], 30, 0.2)
        assert got["id"] == 1
        status, error = call(srv, "/api/items/1/correction", {"tab": TAB_A, "mask_png": png(ring_mask().astype(np.uint8) * 255)})
        assert status == 409 and "open in another tab" in error["error"]  # the idle tab lost it, nothing saved
        # Signing out frees what the tab held at once.
        status, _ = call(srv, "/api/logout", {"tab": TAB_B}, user="dr-b")
        assert status == 200
        assert call(srv, "/api/next", {"tab": TAB_A})[1]["item"]["id"] == 1
    finally:
        srv.shutdown()
        srv.server_close()
