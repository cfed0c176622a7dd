"""A site's governance without a network: the app gate refuses app bundles the site has not
approved (before any of their code is installed), the ClientApp refuses a model signed by a key
the site does not trust, and both refusals are recorded in the site's workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from ugafl.client.app_gate import SITE_CONFIG_ENV, AppNotApproved, check_app, fab_sha256
from ugafl.client.round.records import ledger_path, read_jsonl, refusals_path
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.signing import generate_signing_key, load_private_key, sign_model
from ugafl.common.wire import unique_state

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "flower_app"


def _site(tmp_path: Path, approved: list[str]) -> Path:
    generate_signing_key(tmp_path / "coordinator.key", tmp_path / "coordinator.pub")
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "site.toml"
    path.write_text(f'[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coordinator.pub"]\n'
                    f'approved_apps = {json.dumps(approved)}\n')
    return path


def test_the_gate_runs_only_approved_app_bundles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.build import build_fab_from_disk

    from ugafl.server.coordinator import app_hash

    approved = build_fab_from_disk(APP)
    assert fab_sha256(approved) == app_hash(APP) == fab_sha256(build_fab_from_disk(APP))  # reproducible
    other_app = tmp_path / "other_app"
    shutil.copytree(APP, other_app)
    (other_app / "pyproject.toml").write_text((APP / "pyproject.toml").read_text().replace(
        'clientapp = "ugafl.client.flower_app:app"', 'clientapp = "evil:app"'))
    (other_app / "evil.py").write_text("raise SystemExit('this must never be imported')\n")
    other = build_fab_from_disk(other_app)
    config = _site(tmp_path, [fab_sha256(approved)])

    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)
    with pytest.raises(AppNotApproved, match="no site config"):
        check_app(approved)  # fails closed
    monkeypatch.setenv(SITE_CONFIG_ENV, str(config))
    check_app(approved)
    with pytest.raises(AppNotApproved, match=f"has not approved app sha256:{fab_sha256(other)}"):
        check_app(other)
    [refusal] = read_jsonl(refusals_path(tmp_path / "ws"))
    assert refusal["what"] == "app" and refusal["sha256"] == fab_sha256(other)


def test_the_gate_sits_where_flower_installs_the_bundle() -> None:
    """ugafl-clientapp replaces Flower's install step; if Flower renamed it, this fails here, not silently."""
    from flwr.supernode.runtime import run_clientapp

    assert callable(run_clientapp.install_from_fab)
    source = Path(run_clientapp.__file__).read_text()
    assert source.index("install_from_fab(fab.content") < source.index("load_client_app_fn(")


def _query(state: dict, signed: dict, cfg: ModelConfig) -> Message:
    config = ConfigRecord({"server-round": 1, "run-name": "x", "model-config": json.dumps(cfg.to_dict(), sort_keys=True),
                           "model-signature": json.dumps(signed), "model-version": signed["statement"]["model_sha256"][:12],
                           "selection": "stochastic-batch", "budget": 2, "seed": 0, "method": "tta", "passes": 2})
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "config": config}), dst_node_id=1,
                   message_type=MessageType.QUERY)


def test_a_model_signed_by_an_untrusted_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from ugafl.client.flower_app import make_client_app

    for attribute in ("_run_id", "_task_id", "_node_id"):  # what Flower sets in a ServerApp process
        monkeypatch.setattr(TaskIdentity, attribute, 1)

    config = _site(tmp_path, [])
    generate_signing_key(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    cfg = ModelConfig(channels=(8, 16, 32))
    torch.manual_seed(0)
    state = unique_state(build_model(cfg))  # torch tensors, as the ServerApp sends them
    app = make_client_app()
    context = Context(run_id=1, node_id=1, node_config={"site-config": str(config)}, state=RecordDict(), run_config={})
    signed = sign_model(load_private_key(tmp_path / "stranger.key"), state, round=0, run="x", model_config=cfg.to_dict(),
                        issued=1.0)
    refused = app(_query(state, signed, cfg), context)  # the coordinator sees a category and an id only
    assert refused.has_error() and refused.error.reason.startswith("ugafl site error: model refused; error id ")
    [refusal] = read_jsonl(refusals_path(tmp_path / "ws"))
    assert refusal["what"] == "global model of round 1" and "not a trusted key" in refusal["reason"]
    assert not ledger_path(tmp_path / "ws").exists()  # nothing was done with it

    # The coordinator's own key: accepted, and the ledger records what came in.
    signed = sign_model(load_private_key(tmp_path / "coordinator.key"), state, round=0, run="x",
                        model_config=cfg.to_dict(), issued=1.0)
    reply = app(_query(state, signed, cfg), context)
    assert float(reply.content["metrics"]["queued"]) == 0.0  # an empty inbox
    [entry] = read_jsonl(ledger_path(tmp_path / "ws"))
    assert entry["model_in"]["sha256"] == signed["statement"]["model_sha256"] and entry["update_out"] is None
    assert np.isclose(entry["metrics"]["slides-scored"], 0.0)
