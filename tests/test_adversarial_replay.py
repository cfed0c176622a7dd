"""Replayed models (issue 16): a site runs a global model only if the coordinator signed it for the
run and round the message names, and it is not older than the last model the site accepted. A
model signed for round 1 of another run, sent as round 5, is refused; so is an old model of this
run, one sent again after a newer one, and one whose statement has no issue time. Each refusal is
recorded in the site's workspace and nothing is done with the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ugafl.client.round.handlers import handle
from ugafl.client.round.records import ledger_path, read_jsonl, refusals_path
from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import UgaflError
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.signing import generate_signing_key, load_private_key, sign_model
from ugafl.common.wire import unique_state

CFG = ModelConfig(channels=(4, 8))


@pytest.fixture()
def site(tmp_path: Path) -> SiteConfig:
    generate_signing_key(tmp_path / "coordinator.key", tmp_path / "coordinator.pub")
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "site.toml"
    path.write_text('[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coordinator.pub"]\n')
    return SiteConfig.load(path)


def message(site: SiteConfig, kind: str, round_: int, run: str, signed_round: int, signed_run: str,
            issued: float | None) -> tuple[dict, dict]:
    """(arrays, config) of a `kind` message of round `round_` of `run`, carrying a model the
    coordinator signed for `signed_round` of `signed_run` at `issued` (None: no issue time)."""
    torch.manual_seed(0)
    state = unique_state(build_model(CFG))
    fields = {"round": signed_round, "run": signed_run, "model_config": CFG.to_dict()}
    if issued is not None:
        fields["issued"] = issued
    signed = sign_model(load_private_key(site.trusted_keys[0].with_suffix(".key")), state, **fields)
    arrays = {k: v.numpy() for k, v in state.items()}
    return arrays, {"server-round": round_, "run-name": run, "model-config": json.dumps(CFG.to_dict(), sort_keys=True),
                    "model-signature": json.dumps(signed), "model-version": "x", "gate": False}


def refused(site: SiteConfig, arrays: dict, config: dict, reason: str) -> None:
    before = len(read_jsonl(refusals_path(site.workspace)))
    ledger = len(read_jsonl(ledger_path(site.workspace)))
    with pytest.raises(UgaflError, match=reason):
        handle(site, "evaluate", arrays, config)
    refusals = read_jsonl(refusals_path(site.workspace))
    assert len(refusals) == before + 1 and reason.split(" ")[0] in refusals[-1]["reason"]
    assert len(read_jsonl(ledger_path(site.workspace))) == ledger  # nothing was done with it


def test_a_model_signed_for_another_round_or_run_is_refused(site: SiteConfig) -> None:
    # evaluate messages carry the model of their own round; query and train the previous round's
    refused(site, *message(site, "evaluate", 5, "fed-a", 1, "fed-a", 100.0),
            r"signed for round 1 of run 'fed-a', but the message is round 5 of run 'fed-a' \(expected round 5\)")
    refused(site, *message(site, "evaluate", 5, "fed-a", 5, "fed-old", 100.0),
            r"signed for round 5 of run 'fed-old', but the message is round 5 of run 'fed-a'")
    refused(site, *message(site, "evaluate", 5, "fed-a", 5, "fed-a", None), "no issue time")
    handle(site, "evaluate", *message(site, "evaluate", 5, "fed-a", 5, "fed-a", 100.0))  # as signed: accepted


def test_a_model_older_than_the_last_accepted_is_refused_even_from_a_new_run(site: SiteConfig) -> None:
    handle(site, "evaluate", *message(site, "evaluate", 3, "fed-a", 3, "fed-a", 200.0))
    handle(site, "evaluate", *message(site, "evaluate", 3, "fed-a", 3, "fed-a", 200.0))  # the same again: fine
    # a genuine model of an earlier run, replayed with a message made to match it
    refused(site, *message(site, "evaluate", 1, "fed-0", 1, "fed-0", 150.0),
            "older than the last model this site accepted")
    # a newer run starts at round 1: accepted
    handle(site, "evaluate", *message(site, "evaluate", 1, "fed-b", 1, "fed-b", 300.0))
    accepted = json.loads((site.workspace / "federation" / "accepted.json").read_text())
    assert (accepted["run"], accepted["round"], accepted["issued"]) == ("fed-b", 1, 300.0)
