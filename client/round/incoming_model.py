"""The global model a site receives: run only after a trusted coordinator's signature checks out
over exactly these weights and this architecture, for the run and round the message names, and
the model is not older than the last one the site accepted (a replay)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import ConfigError
from ugafl.common.model import ModelConfig, build_model, pick_device
from ugafl.common.atomic import atomic_write_text
from ugafl.common.signing import SignatureError, load_public_key, verify_model
from ugafl.common.wire import load_unique_state


def global_model(site: SiteConfig, arrays: Mapping[str, np.ndarray], model_config: Mapping[str, Any], signature: Any,
                 what: str) -> tuple[torch.nn.Module, ModelConfig, dict]:
    """The model the coordinator sent, after checking that a trusted key signed exactly these
    weights and this architecture; (model on the site's device, its config, the signed statement)."""
    statement = verify_model(arrays, signature, [load_public_key(k) for k in site.trusted_keys], what)
    if statement.get("model_config") != dict(model_config):
        raise ConfigError(f"{what}: the architecture sent differs from the one the coordinator signed")
    cfg = ModelConfig.from_dict(dict(model_config))
    model = build_model(cfg)
    load_unique_state(model, arrays, what)
    return model.to(pick_device(site.device)).eval(), cfg, statement


def accepted_path(workspace: Path) -> Path:
    return workspace / "federation" / "accepted.json"


def check_not_replayed(workspace: Path, statement: Mapping[str, Any], round_: int, signed_round: int, run: str,
                       what: str) -> None:
    """SignatureError unless the coordinator signed `statement` for round `signed_round` of `run`
    (what a message of round `round_` names) and issued it no earlier than the last model this site accepted; then
    that model is this one. The issue time is the coordinator's clock, compared only with itself."""
    if (statement.get("round"), statement.get("run")) != (signed_round, run):
        raise SignatureError(f"{what}: signed for round {statement.get('round')} of run {statement.get('run')!r}, but "
                             f"the message is round {round_} of run {run!r} (expected round "
                             f"{signed_round}); refused as a replay")
    issued = statement.get("issued")
    if not isinstance(issued, (int, float)) or isinstance(issued, bool) or not math.isfinite(issued):
        raise SignatureError(f"{what}: the signed statement has no issue time; refused (a replay cannot be ruled out)")
    path = accepted_path(workspace)
    try:
        last = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        last = {}
    if isinstance(last.get("issued"), (int, float)) and issued < last["issued"]:
        raise SignatureError(f"{what}: issued at {issued:.3f}, older than the last model this site accepted "
                             f"(round {last.get('round')} of run {last.get('run')!r}, issued at {last['issued']:.3f}); "
                             "refused as a replay")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"run": run, "round": signed_round, "issued": issued}))
