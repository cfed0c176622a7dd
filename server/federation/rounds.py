"""The coordinator's round as plain code: query -> train -> check and aggregate -> signed
checkpoint -> evaluate, round after round, resuming after the newest complete round. It talks to
the sites only through `Sites` ("send this to these sites, give me their replies"), so Flower's
ServerApp and an in-process test drive exactly the same code.

rounds.csv, one row per round: the query's counts summed over the sites (`query-score-mean` is
the mean score of every patch queued this round, `query-score-max` the highest), the train
metrics the same way (`train-loss` and `train-seconds`: the mean over the sites that trained),
the updates aggregated and refused, the sites' evaluation (`sites-*`, weighted as the
aggregation is), the server's own Dice on the central validation slides, and timings.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ugafl.common.log import get_logger
from ugafl.common.model import ModelConfig
from ugafl.server.federation.aggregation import (AGGREGATIONS, AggregationParams, check_aggregate,
                                                 coordinator_weight, weighted_metrics)
from ugafl.server.federation.privacy import add_noise, clip_update, noise_std
from ugafl.server.federation.settings import FederationSettings
from ugafl.server.federation.sites import Reply, Sites
from ugafl.server.federation.spool import clear, round_spool, spool
from ugafl.server.federation.checkpoints import RoundStore
from ugafl.server.federation.gate import judge
from ugafl.server.federation.update_checks import check_round

log = get_logger("rounds")

_MAX = {"score-max", "seconds-compute", "seconds-startup"}
_MEAN = {"loss", "seconds", "dice"}


def summarise(prefix: str, replies: Sequence[Reply]) -> dict[str, float]:
    """One rounds.csv cell per metric over the sites that answered: counts summed, `score-mean`
    weighted by the patches each site queued, `score-max` the maximum, loss/seconds/dice the mean."""
    ok = [r for r in replies if r.error is None]
    out: dict[str, float] = {}
    keys = [k for k in dict.fromkeys(k for r in ok for k in r.metrics) if not k.startswith("gate-")]  # the gate's own
    for key in keys:
        values = [float(r.metrics[key]) for r in ok if key in r.metrics]
        if key in _MAX:
            out[f"{prefix}-{key}"] = max(values)
        elif key in _MEAN:
            out[f"{prefix}-{key}"] = float(np.mean(values))
        elif key == "score-mean":
            weights = [float(r.metrics.get("queued", 0.0)) for r in ok if key in r.metrics]
            out[f"{prefix}-{key}"] = float(np.average(values, weights=weights)) if sum(weights) > 0 else 0.0
        else:
            out[f"{prefix}-{key}"] = float(sum(values))
    return out


def site_seconds(prefix: str, replies: Sequence[Reply]) -> dict[str, float]:
    """`<prefix>-seconds-site`: the most one site spent on the message (ClientApp start + handler)."""
    spent = [float(r.metrics.get("seconds-startup", 0.0)) + float(r.metrics.get("seconds-compute", 0.0))
             for r in replies if r.error is None and "seconds-compute" in r.metrics]
    return {f"{prefix}-seconds-site": max(spent)} if spent else {}


def _log_errors(round_: int, what: str, replies: Sequence[Reply]) -> None:
    for r in replies:
        if r.error is not None:
            log.warning("round %d: site %d replied to %s with an error: %s", round_, r.site, what, r.error)


@dataclass
class Aggregated:
    """The outcome of a round's train step."""

    arrays: dict[str, np.ndarray] | None  # None: nothing to aggregate, the global model stays
    metrics: dict[str, float] = field(default_factory=dict)
    accepted: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)
    idle: int = 0  # sites with nothing new whose vote kept the global model (idle_sites = "keep")
    aggregate_refused: str = ""  # why the aggregate itself was refused (aggregation.check_aggregate)


def aggregate(round_: int, replies: Sequence[Reply], reference: dict[str, np.ndarray],
              settings: FederationSettings) -> Aggregated:
    """Leave out error replies, refuse bad updates (update_checks), aggregate the rest with the
    configured strategy and weighting. A site with nothing new sends no weights; with idle_sites =
    "keep" and one vote per site, its vote is the global model as it was (a zero update), so a
    round in which only some sites have corrections moves the model by their share, not all the
    way to their models; with "skip" it is left out of the average."""
    _log_errors(round_, "train", replies)
    updates: dict[int, Reply] = {}
    idle: list[int] = []
    refused: list[tuple[int, str]] = []
    for r in replies:
        if r.error is not None:
            continue
        count = _count(r)
        if count is None:
            refused.append((r.site, f"reported num-examples {r.metrics.get('num-examples')}: not a finite count >= 0"))
            log.warning("round %d: site %d's update refused: %s", round_, r.site, refused[-1][1])
        elif count <= 0 or r.arrays is None:
            idle.append(r.site)
        else:
            updates[r.site] = r
    keep_idle = settings.idle_sites == "keep" and settings.weighting == "sites"
    for site in idle:
        log.info("round %d: site %d has nothing new; %s", round_, site,
                 "its vote keeps the global model" if keep_idle else "left out of the average")
    verdicts = check_round({s: r.arrays for s, r in updates.items()}, reference, settings.norm_factor)
    keep = [updates[v.node_id] for v in verdicts if v.accepted]
    refused += [(v.node_id, v.reason) for v in verdicts if not v.accepted]
    if not keep:
        log.warning("round %d: no update to aggregate; the global model stays as it was", round_)
        return Aggregated(None, {}, 0, refused)
    weights = [weight_of(round_, r, settings) for r in keep]
    votes = [r.arrays for r in keep] + ([reference] * len(idle) if keep_idle else [])
    if settings.dp_clip_norm > 0:  # central DP: every vote's change clipped before it is averaged
        votes = [clip_update(v, reference, settings.dp_clip_norm) for v in votes]
    arrays = AGGREGATIONS[settings.aggregation](votes, weights + ([1.0] * len(idle) if keep_idle else []),
                                                AggregationParams(trim_beta=settings.trim_beta))
    problem = check_aggregate(arrays, reference, votes)
    if problem:
        log.warning("round %d: the aggregate was refused: %s; the global model stays as it was", round_, problem)
        return Aggregated(None, {}, len(keep), refused, aggregate_refused=problem)
    if settings.dp_noise_multiplier > 0:  # after the check: the noise is meant to move it
        std = noise_std(settings.dp_noise_multiplier, settings.dp_clip_norm, len(votes))
        arrays = add_noise(arrays, std, np.random.default_rng([settings.seed, round_]))
        log.info("round %d: central DP noise with std %.3g added (clip %.3g, %d votes)", round_, std,
                 settings.dp_clip_norm, len(votes))
    return Aggregated(arrays, weighted_metrics([r.metrics for r in keep], weights), len(keep), refused,
                      len(idle) if keep_idle else 0)


def _count(reply: Reply) -> float | None:
    """The reply's num-examples if it is a finite count >= 0 (missing: 0), else None."""
    try:
        count = float(reply.metrics.get("num-examples", 0.0))
    except (TypeError, ValueError):
        return None
    return count if math.isfinite(count) and count >= 0 else None


def weight_of(round_: int, reply: Reply, settings: FederationSettings) -> float:
    """The coordinator's weight for an accepted update (aggregation.coordinator_weight), logging a cap."""
    count = _count(reply) or 0.0
    if settings.weighting == "examples" and count > settings.max_examples:
        log.warning("round %d: site %d reported %.4g examples; counted as %d (max_examples)", round_, reply.site,
                    count, settings.max_examples)
    return coordinator_weight(count, settings.weighting, settings.max_examples)


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _outgoing(store: RoundStore, state: dict[str, torch.Tensor], cfg: ModelConfig, round_: int,
              settings: FederationSettings) -> dict:
    """What every message of a round carries besides the arrays: the model's signed statement."""
    signed = store.sign(state, cfg, round_)
    return {"run-name": settings.run_name, "model-config": json.dumps(cfg.to_dict(), sort_keys=True),
            "model-signature": json.dumps(signed),
            "model-version": signed["statement"]["model_sha256"][:12], "seed": settings.seed}


def _server_dice(path, settings: FederationSettings) -> dict[str, float]:
    if not settings.eval_data:
        return {}
    from ugafl.server.evaluation import evaluate_model

    centres = [c.strip() for c in settings.eval_centres.split(",") if c.strip()]
    ev = evaluate_model(path, settings.eval_data, "test", centres, progress=False)
    return {f"server-dice-{c}": d for c, d in ev.centre_dice().items()}


def run_round(sites: Sites, settings: FederationSettings, store: RoundStore, state: dict[str, torch.Tensor],
              cfg: ModelConfig, round_: int) -> dict[str, torch.Tensor]:
    """One round from the global model `state` (as kept after round - 1); the model kept after it."""
    clock = _PhaseClock()
    base = _outgoing(store, state, cfg, round_ - 1, settings)
    arrays = _numpy(state)
    clock.lap("sign")
    nodes = sites.wait_for(settings.min_nodes)
    log.info("round %d/%d: %d site(s) connected", round_, settings.num_rounds, len(nodes))
    query = {**base, "server-round": round_, "selection": settings.selection, "budget": settings.budget,
             "method": settings.method, "passes": settings.passes, "patch-um": settings.patch_um,
             "patch-scoring": settings.patch_scoring, "tumour-reserve": settings.tumour_reserve}
    query_replies = sites.send("query", arrays, query, nodes)
    _log_errors(round_, "query", query_replies)
    clock.lap("query")

    train = {**base, "server-round": round_, **local_recipe(settings)}
    spooled = round_spool(Path(settings.out_dir), round_)
    train_replies: list[Reply] = []
    try:  # each update is kept on disk as it arrives, not in memory (server.federation.spool)
        train_replies = sites.send("train", arrays, train, sites.wait_for(settings.min_nodes),
                                   on_reply=lambda reply: _to_disk(reply, spooled))
        clock.lap("train")
        outcome = aggregate(round_, train_replies, arrays, settings)
        candidate = state if outcome.arrays is None else {k: torch.from_numpy(np.array(v)) for k, v in outcome.arrays.items()}
    finally:
        clear(spooled)
    train_replies = [replace(r, arrays=None) for r in train_replies]  # their files are gone
    clock.lap("aggregate")

    row: dict = {"round": round_, **summarise("query", query_replies), **site_seconds("query", query_replies),
                 **summarise("train", train_replies), **site_seconds("train", train_replies),
                 "updates-aggregated": outcome.accepted, "updates-refused": len(outcome.refused),
                 "updates-idle-kept": outcome.idle, "aggregate-refused": float(bool(outcome.aggregate_refused))}

    def evaluate(model_state: dict[str, torch.Tensor], signed: dict) -> list[Reply]:
        message = {**base, "server-round": round_, "model-signature": json.dumps(signed),
                   "model-version": signed["statement"]["model_sha256"][:12], "gate": settings.gate}
        replies = sites.send("evaluate", _numpy(model_state), message, sites.wait_for(settings.min_nodes))
        _log_errors(round_, "evaluate", replies)
        return replies

    gate_metrics: dict[str, float] = {}
    if settings.gate and outcome.arrays is not None:  # the sites judge the aggregate before it is kept
        signed_candidate = store.sign(candidate, cfg, round_)
        clock.lap("checkpoint")
        eval_replies = evaluate(candidate, signed_candidate)
        clock.lap("evaluate")
        verdict = judge(train_replies, eval_replies, settings.gate_held_drop, settings.gate_val_drop)
        gate_metrics = verdict.metrics
        if verdict.keep:
            state = candidate
            log.info("round %d: the gate kept the aggregate (%s)", round_, verdict.reason)
        else:
            log.warning("round %d: the gate refused the aggregate: %s; the model of round %d stays", round_,
                        verdict.reason, round_ - 1)
        path, signed = store.save(state, cfg, round_, {"train": outcome.metrics, "gate": gate_metrics})
        clock.lap("checkpoint")
    else:
        state = candidate
        path, signed = store.save(state, cfg, round_, {"train": outcome.metrics})
        clock.lap("checkpoint")
        eval_replies = evaluate(state, signed)
        clock.lap("evaluate")
    row.update(gate_metrics)
    labelled = [r for r in eval_replies if r.error is None and (_count(r) or 0.0) > 0]
    row.update({f"sites-{k}": v for k, v in weighted_metrics(
        [{k: v for k, v in r.metrics.items() if not k.startswith(("gate-", "seconds-"))} for r in labelled],
        [coordinator_weight(_count(r) or 0.0, settings.weighting, settings.max_examples) for r in labelled]).items()})
    row.update({k: v for k, v in summarise("evaluate", eval_replies).items() if k.startswith("evaluate-seconds-")})
    row.update(site_seconds("evaluate", eval_replies))
    row.update(_server_dice(path, settings))
    clock.lap("server-eval")
    row.update(clock.row(row))
    store.append_metrics(row)
    store.commit(path, signed)  # last: a restart before this runs the round again
    log.info("round %d done in %.1f s (%.1f s besides the model's compute): %s", round_, row["seconds-round"],
             row["seconds-overhead"], row)
    return state


class _PhaseClock:
    """The coordinator's wall time per phase of a round (rounds.csv's `seconds-*`)."""

    PHASES = ("sign", "query", "train", "aggregate", "checkpoint", "evaluate", "server-eval")

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started

    def row(self, row: dict) -> dict[str, float]:
        """The timing cells, `seconds-overhead` from the sites' compute already in `row`."""
        compute = sum(float(row.get(f"{p}-seconds-compute", 0.0)) for p in ("query", "train", "evaluate"))
        total = self.total()
        return {**{f"seconds-{p}": round(s, 2) for p, s in self.seconds.items()}, "seconds-round": round(total, 2),
                "seconds-overhead": round(total - compute - self.seconds["server-eval"], 2)}


def _to_disk(reply: Reply, folder: Path) -> Reply:
    """The reply with its update written under `folder` and read back lazily from there."""
    if reply.error is not None or reply.arrays is None:
        return reply
    return replace(reply, arrays=spool(reply.arrays, folder / f"site-{reply.site}"))


def local_recipe(settings: FederationSettings) -> dict:
    """The train message's config: how the sites fine-tune this round (client.round.local_training.LocalRecipe)."""
    return {"local-training": settings.local_training, "local-steps": settings.local_steps,
            "local-epochs": settings.local_epochs, "lr": settings.lr, "proximal-mu": settings.proximal_mu,
            "anchor-share": settings.anchor_share, "anchor-crops": settings.anchor_crops,
            "local-loss": settings.local_loss, "stain-augmentation": settings.stain_augmentation,
            "gate": settings.gate}


def run_federation(sites: Sites, settings: FederationSettings) -> None:
    """The whole run: resume after the newest complete round (or start from the central model),
    then rounds until settings.num_rounds."""
    store = RoundStore(settings)
    done, state, cfg = store.start()
    for round_ in range(done + 1, settings.num_rounds + 1):
        state = run_round(sites, settings, store, state, cfg, round_)
