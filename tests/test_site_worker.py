"""The site's round worker (client.round.worker): the ClientApp forwards a message over the
worker's Unix socket and sends back exactly what the worker's handler answered: the same reply a
ClientApp answering by itself sends, the same error replies (a category and an id), recorded in
the same outbox. The socket is the site user's only (0600); a request it cannot read, or one
larger than its limit, is dropped and the worker goes on; a stale socket file is replaced, a live
worker is not; a worker that dies with the message is an error reply, never a second run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from review_helpers import he_patch, ring_mask
from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue
from ugafl.client.round.records import ledger_path, outbox_path, read_jsonl
from ugafl.client.round.worker import bind, serve
from ugafl.client.round.worker_link import _LENGTH, MAX_HEADER_BYTES, ask, socket_path
from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import UgaflError
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.signing import generate_signing_key, load_private_key, sign_model
from ugafl.common.wire import unique_state

CFG = ModelConfig(channels=(4, 8))
REASON = re.compile(r"^ugafl site error: (?P<category>[a-z ]+); error id (?P<id>[0-9a-f]{12}); ")


@pytest.fixture(autouse=True)
def _identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):  # what Flower sets in a ClientApp process
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def make_site(root: Path) -> Path:
    """A site with three corrected patches in its queue (so that train has something to send)."""
    (root / "inbox").mkdir(parents=True)
    if not (root.parent / "coordinator.key").exists():
        generate_signing_key(root.parent / "coordinator.key", root.parent / "coordinator.pub")
        generate_signing_key(root.parent / "stranger.key", root.parent / "stranger.pub")
    path = root / "site.toml"
    path.write_text('[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["../coordinator.pub"]\n')
    mask = ring_mask()
    with CorrectionQueue(SiteConfig.load(path).workspace) as q:
        for i in range(3):
            item = q.add(NewItem(PatchOrigin("s.tif", (256 * i, 0, 256, 256), 2.0),
                                 PatchReason(0.5, "uga", "random", "v", 1),
                                 PatchPixels(he_patch(i), mask, np.zeros(mask.shape, np.float32))))
            q.submit_correction(item, mask, "dr")
    return path


def message(root: Path, kind: str, key: str = "coordinator", round_: int = 1) -> Message:
    torch.manual_seed(0)
    state = unique_state(build_model(CFG))
    signed = sign_model(load_private_key(root / f"{key}.key"), state, round=round_ - 1 if kind != "evaluate" else round_,
                        run="r", model_config=CFG.to_dict(), issued=10.0 * round_)
    config = {"server-round": round_, "run-name": "r", "model-config": json.dumps(CFG.to_dict(), sort_keys=True),
              "model-signature": json.dumps(signed), "model-version": "x", "selection": "random", "budget": 2,
              "seed": 0, "method": "tta", "passes": 2, "local-training": "plain", "local-steps": 3,
              "local-epochs": 1.0, "lr": 0.001, "proximal-mu": 0.0, "anchor-share": 0.0, "anchor-crops": 0,
              "local-loss": "dice-ce", "gate": False}
    kinds = {"query": MessageType.QUERY, "train": MessageType.TRAIN, "evaluate": MessageType.EVALUATE}
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord(config)}), dst_node_id=1,
                   message_type=kinds[kind])


def client_app(msg: Message, site: Path) -> Message:
    from ugafl.client.flower_app import make_client_app

    context = Context(run_id=1, node_id=1, node_config={"site-config": str(site)}, state=RecordDict(), run_config={})
    return make_client_app()(msg, context)


class Worker:
    """`python -m ugafl.client.round.worker SITE_TOML`, as the site daemon runs it; stopped by pid."""

    def __init__(self, site: Path):
        self.log = site.parent / "worker.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ugafl.client.round.worker", str(site)], stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        deadline = time.monotonic() + 120
        while "round worker listening" not in self.text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.1)

    def text(self) -> str:
        return self.log.read_text()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture()
def twins(tmp_path: Path):
    """Two identical sites: one answered through its worker, one by the ClientApp itself."""
    worked, plain = make_site(tmp_path / "worked"), make_site(tmp_path / "plain")
    worker = Worker(worked)
    yield worked, plain, worker
    worker.close()


def replies_match(a: Message, b: Message) -> None:
    assert not a.has_error() and not b.has_error()
    ma, mb = dict(a.content["metrics"].items()), dict(b.content["metrics"].items())
    timing = {"seconds-compute", "seconds-startup", "seconds"}
    assert set(ma) == set(mb) and {"seconds-compute", "seconds-startup"} <= set(ma)
    assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mb.items() if k not in timing}
    assert ("arrays" in a.content) == ("arrays" in b.content)
    if "arrays" in a.content:
        for name, array in a.content["arrays"].items():
            np.testing.assert_array_equal(array.numpy(), b.content["arrays"][name].numpy(), err_msg=name)


def test_forwarded_messages_get_the_replies_the_clientapp_would_send(twins, tmp_path: Path) -> None:
    worked, plain, worker = twins
    for i, kind in enumerate(("query", "train", "evaluate")):
        via_worker = client_app(message(tmp_path, kind), worked)
        assert not via_worker.has_error(), via_worker.error.reason
        assert worker.text().count("answering a ") == i + 1 and f"answering a {kind} message" in worker.text()
        replies_match(via_worker, client_app(message(tmp_path, kind), plain))
    # The outbox records what left, as it does without the worker.
    sent = [e["records"]["metrics"]["values"] for e in read_jsonl(outbox_path(SiteConfig.load(worked).workspace))]
    assert [sorted(v) for v in sent] == [sorted(e["records"]["metrics"]["values"])
                                         for e in read_jsonl(outbox_path(SiteConfig.load(plain).workspace))]
    trained = read_jsonl(outbox_path(SiteConfig.load(worked).workspace))[1]["records"]
    assert trained["arrays"]["type"] == "ArrayRecord"  # the train reply carried the weights back

    # An error is answered as the ClientApp answers it: a category and an id, the detail in the
    # site's errors.jsonl; the worker goes on answering.
    refused = client_app(message(tmp_path, "query", key="stranger", round_=2), worked)
    match = REASON.match(refused.error.reason)
    assert refused.has_error() and match and match["category"] == "model refused", refused.error.reason
    errors = read_jsonl(SiteConfig.load(worked).workspace / "federation" / "errors.jsonl")
    assert [e["id"] for e in errors] == [match["id"]]
    assert not client_app(message(tmp_path, "evaluate", round_=2), worked).has_error()


def test_the_socket_is_private_and_unreadable_requests_are_dropped(twins, tmp_path: Path) -> None:
    worked, _, worker = twins
    path = socket_path(SiteConfig.load(worked).workspace)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for request in (b"garbage that is not a frame", _LENGTH.pack(MAX_HEADER_BYTES + 1) + b"{",
                    _LENGTH.pack(12) + b'{"message-t', _LENGTH.pack(2) + b"{}" + _LENGTH.pack(0)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            try:
                assert s.recv(1) == b""  # dropped: closed without a reply
            except ConnectionResetError:  # closed with some of the request unread
                pass
    assert not client_app(message(tmp_path, "evaluate"), worked).has_error()  # still answering
    assert worker.text().count("cannot read was dropped") == 4 and worker.proc.poll() is None

    with pytest.raises(UgaflError, match="already listening"):
        bind(path)  # a second worker for the same workspace


def test_stale_socket_replaced_and_a_lost_worker_is_an_error_not_a_rerun(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    path = socket_path(SiteConfig.load(site).workspace)
    stale = bind(path)
    stale.close()  # a killed worker leaves its socket file behind
    assert path.exists() and ask(path, "query", {}, {}, 1, 0.0) is None  # nobody listens: answered locally
    worker = Worker(site)
    assert not client_app(message(tmp_path, "evaluate"), site).has_error()
    worker.close()
    assert not path.exists()

    # A worker that takes the message and dies: the ClientApp replies with an error and does not
    # run the step itself (it may have run).
    listener = bind(path)

    def take_and_die() -> None:
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()

    thread = threading.Thread(target=take_and_die)
    thread.start()
    ledger = ledger_path(SiteConfig.load(site).workspace)
    before = ledger.read_text() if ledger.exists() else ""
    reply = client_app(message(tmp_path, "evaluate", round_=2), site)
    thread.join(10)
    listener.close()
    assert reply.has_error() and REASON.match(reply.error.reason), reply.error.reason
    assert (ledger.read_text() if ledger.exists() else "") == before
    shutil.rmtree(tmp_path / "site")


def test_an_empty_frame_to_a_peer_that_has_read_it_and_gone_is_no_error() -> None:
    """A reply without arrays ends with an empty frame: the ClientApp reads its length and closes.
    Python's sendall(b"") still calls send() and raised EPIPE there, which the worker logged as a
    lost reply (seen in a deployment run's evaluate messages) although the reply had arrived."""
    from ugafl.client.round.worker_link import recv_frame, send_frame

    worker, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    class ClientAppClosesOnceItHasTheLength:  # the real sockets, with the ClientApp's side run in step
        def sendall(self, data: bytes) -> None:
            worker.sendall(data)
            if data == _LENGTH.pack(0):
                assert app.recv(_LENGTH.size) == data
                app.close()

    with worker:
        send_frame(worker, b'{"metrics": {}}')
        assert recv_frame(app, MAX_HEADER_BYTES) == b'{"metrics": {}}'
        send_frame(ClientAppClosesOnceItHasTheLength(), b"")  # nothing left to send after the length: no EPIPE
        assert app.fileno() == -1
