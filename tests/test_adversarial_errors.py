"""Nothing identifying leaves a site in an error reply (issue 16). The ClientApp is made to fail in
each way it can: a model signed by a stranger, a replayed model, a SuperNode without a site
config, a site config path that does not exist, a message missing a field, a workspace whose
queue is not a database, and a bug deep in a step whose message names a slide. What the
coordinator receives is Flower's error message with a fixed category and an error id, never a
path, a file name or a slide; the detail stays in the site's log (and its workspace's
federation/errors.jsonl) under that id."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from ugafl.client.round.records import read_jsonl
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.signing import generate_signing_key, load_private_key, sign_model
from ugafl.common.wire import unique_state
from ugafl.common.wire_pack import INDEX, pack_arrays

CFG = ModelConfig(channels=(4, 8))
REASON = re.compile(r"^ugafl site error: (?P<category>[a-z ]+); error id (?P<id>[0-9a-f]{12}); "
                    r"the detail is in the site's log$")
SECRET = "PATIENT-0042"  # in every path and slide name the site holds


@pytest.fixture(autouse=True)
def _identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):  # what Flower sets in a ClientApp process
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def _site(tmp_path: Path) -> Path:
    root = tmp_path / SECRET
    (root / "inbox").mkdir(parents=True)
    generate_signing_key(root / "coordinator.key", root / "coordinator.pub")
    generate_signing_key(root / "stranger.key", root / "stranger.pub")
    path = root / "site.toml"
    path.write_text('[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coordinator.pub"]\n')
    return path


def _message(site: Path, key: str = "coordinator", round_: int = 1, signed_round: int = 0, issued: float = 10.0,
             drop: str = "") -> Message:
    torch.manual_seed(0)
    state = unique_state(build_model(CFG))
    signed = sign_model(load_private_key(site.parent / f"{key}.key"), state, round=signed_round, run="r",
                        model_config=CFG.to_dict(), issued=issued)
    config = {"server-round": round_, "run-name": "r", "model-config": json.dumps(CFG.to_dict(), sort_keys=True),
              "model-signature": json.dumps(signed), "model-version": "x", "selection": "random", "budget": 2,
              "seed": 0, "method": "tta", "passes": 2}
    config.pop(drop, None)
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord(config)}), dst_node_id=1,
                   message_type=MessageType.QUERY)


def _fails(tmp_path: Path, message: Message, node_config: dict, caplog: pytest.LogCaptureFixture,
           category: str, detail: str) -> str:
    """Run the ClientApp; check the error reply and the site's log; the error id."""
    from ugafl.client.flower_app import make_client_app

    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ugafl"):
        reply = make_client_app()(message, context)
    assert reply.has_error() and not reply.has_content()
    match = REASON.match(reply.error.reason)
    assert match, reply.error.reason
    assert match["category"] == category
    assert SECRET not in reply.error.reason and "/" not in reply.error.reason
    logged = [r for r in caplog.records if match["id"] in r.getMessage()]
    assert logged and re.search(detail, logged[0].getMessage() + str(logged[0].exc_info)), caplog.text
    return match["id"]


def test_an_error_reply_carries_a_category_and_an_id_never_the_detail(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site(tmp_path)
    node = {"site-config": str(site)}
    errors = site.parent / "ws" / "federation" / "errors.jsonl"

    error_id = _fails(tmp_path, _message(site, key="stranger"), node, caplog, "model refused", "not a trusted key")
    assert [e["id"] for e in read_jsonl(errors)] == [error_id]
    assert SECRET in read_jsonl(errors)[0]["detail"] or "not a trusted key" in read_jsonl(errors)[0]["detail"]

    _fails(tmp_path, _message(site, signed_round=7), node, caplog, "model refused", "refused as a replay")
    _fails(tmp_path, _message(site), {}, caplog, "site configuration", "no site-config")
    _fails(tmp_path, _message(site), {"site-config": str(site.parent / "missing" / "site.toml")}, caplog,
           "site configuration", f"{SECRET}/missing/site.toml")
    _fails(tmp_path, _message(site, drop="model-config"), node, caplog, "internal error", "model-config")

    smuggling = _message(site)  # the model packed for the wire, with elements the index does not name
    packed = pack_arrays({k: v.numpy() for k, v in smuggling.content["arrays"].items()})
    flat = next(k for k in packed if k != INDEX)
    packed[flat] = np.concatenate([packed[flat], np.zeros(64, packed[flat].dtype)])
    smuggling.content["arrays"] = ArrayRecord({k: Array(v) for k, v in packed.items()})
    _fails(tmp_path, smuggling, node, caplog, "model refused", "elements no array names")

    (site.parent / "ws" / "queue.db").write_bytes(b"this is not a database " * 100)
    _fails(tmp_path, _message(site), node, caplog, "site data", "not a database|file is not")
    (site.parent / "ws" / "queue.db").unlink()

    from ugafl.client.round import query as query_step

    def bug(*args, **kwargs):
        raise RuntimeError(f"cannot read {site.parent / 'inbox' / (SECRET + '_node3.tif')}: truncated")

    monkeypatch.setattr(query_step, "query", bug)
    error_id = _fails(tmp_path, _message(site), node, caplog, "internal error", f"{SECRET}_node3.tif")
    assert read_jsonl(errors)[-1]["id"] == error_id and f"{SECRET}_node3.tif" in read_jsonl(errors)[-1]["detail"]
