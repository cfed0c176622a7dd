"""The three messages a site answers (query, train, evaluate) as plain functions over plain data:
the ClientApp only translates Flower's messages into these calls and their replies back, and a
test can drive a site with no Flower at all.

Each handler verifies the incoming global model (a model the site does not trust is recorded as
refused and raises, naming the reason and never the site's files), does the step, records the
reply in the site's ledger and outbox, and returns only what may leave the site: model arrays and
scalar metrics. Every reply's metrics include its timing: `seconds-compute`, the handler's own
wall time (the model's check and the step), and `seconds-startup`, what the caller measured before
the handler ran (the ClientApp process's start)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ugafl.client.round import local_evaluation, local_training
from ugafl.client.round import query as query_step
from ugafl.client.round.incoming_model import check_not_replayed, global_model
from ugafl.client.round.records import describe_reply, keep_model, record_message, record_refusal, record_reply
from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import UgaflError
from ugafl.common.correction_patch import CORRECTION_PATCH_UM

MESSAGE_TYPES = ("query", "train", "evaluate")


@dataclass(frozen=True)
class SiteReply:
    """What a site sends back: scalar metrics, and model arrays after training (None otherwise)."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class _Incoming:
    model: Any
    cfg: Any
    config: Mapping[str, Any]
    round_: int
    signed: dict


def _incoming(site: SiteConfig, message_type: str, arrays: Mapping[str, np.ndarray],
              config: Mapping[str, Any]) -> _Incoming:
    round_ = int(config["server-round"])
    what = f"global model of round {round_}"
    try:
        model, cfg, statement = global_model(site, arrays, json.loads(str(config["model-config"])),
                                             str(config.get("model-signature", "")), what)
        # evaluate carries the round's own model; query and train the model of the round before
        check_not_replayed(site.workspace, statement, round_, round_ if message_type == "evaluate" else round_ - 1,
                           str(config.get("run-name", "")), what)
    except UgaflError as error:
        record_refusal(site.workspace, what, str(error))
        raise
    return _Incoming(model, cfg, config, round_, json.loads(str(config["model-signature"])))


def _query(site: SiteConfig, msg: _Incoming) -> tuple[dict[str, float], None, None]:
    method, passes = str(msg.config.get("method", "tta")), int(msg.config.get("passes", 4))
    patch_um = float(msg.config.get("patch-um", CORRECTION_PATCH_UM))
    keep_model(site.workspace, msg.model, msg.cfg, msg.signed, method, passes, patch_um)  # for the inbox watcher
    metrics = query_step.query(site, msg.model, msg.cfg, str(msg.config["model-version"]), msg.round_,
                               str(msg.config["selection"]), int(msg.config["budget"]), int(msg.config["seed"]),
                               method, passes, patch_um, str(msg.config.get("patch-scoring", "mean")),
                               float(msg.config.get("tumour-reserve", 0.0)))
    return metrics, None, None


def _train(site: SiteConfig, msg: _Incoming) -> tuple[dict[str, float], dict | None, list[int] | None]:
    recipe = local_training.LocalRecipe.from_message(msg.config)
    state, ids, metrics = local_training.train(site, msg.model, msg.cfg, recipe, int(msg.config["seed"]) + msg.round_,
                                               msg.round_)
    used = ids if state is not None and site.role != "central" else []
    return metrics, state, used  # nothing new: no arrays, zero examples


def _evaluate(site: SiteConfig, msg: _Incoming) -> tuple[dict[str, float], None, None]:
    return local_evaluation.evaluate(site, msg.model, msg.cfg, bool(msg.config.get("gate", False))), None, None


_STEPS: dict[str, Callable[[SiteConfig, _Incoming], tuple]] = {"query": _query, "train": _train, "evaluate": _evaluate}


def handle(site: SiteConfig, message_type: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any],
           run_id: int = 0, startup_s: float = 0.0) -> SiteReply:
    """Answer one message of `message_type` carrying the global model's `arrays` and the round's
    `config`; `startup_s`: seconds the caller spent before this call (reported, see above)."""
    if message_type not in _STEPS:
        raise UgaflError(f"unknown message type {message_type!r}; one of {', '.join(MESSAGE_TYPES)}")
    started = time.perf_counter()
    msg = _incoming(site, message_type, arrays, config)
    metrics, state, used = _STEPS[message_type](site, msg)
    metrics = {**{k: float(v) for k, v in metrics.items()},
               "seconds-compute": time.perf_counter() - started, "seconds-startup": float(startup_s)}
    out = None if state is None else {k: v.detach().cpu().numpy() for k, v in state.items()}
    described = describe_reply(metrics, out)
    record_reply(site.workspace, message_type, msg.round_, described)
    record_message(site.workspace, message_type, run_id, msg.round_, msg.signed,
                   described["arrays"]["sha256"] if out is not None else None, metrics, used)
    return SiteReply(metrics, out)
