"""The Flower ServerApp: glue between Flower's Grid and strategies and `ugafl.server.federation`.

A round: query (each site scores its slides with the signed global model and queues the next
patches) -> train (sites fine-tune on their corrected patches; updates are checked, then
aggregated by the configured Flower strategy) -> a signed checkpoint -> evaluate (sites' Dice on
their labelled patches) and server-side evaluation on the central validation slides.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg

from ugafl.common.log import configure, get_logger
from ugafl.server.federation import WEIGHTINGS, FederationSettings, RoundStore
from ugafl.server.update_checks import check_round

log = get_logger("server_app")


def _checked(base: type) -> type:
    """`base` strategy that leaves out replies with no examples and refuses bad updates
    (update_checks) before aggregating the rest."""

    class Checked(base):
        reference: dict[str, np.ndarray] = {}
        norm_factor: float = 10.0
        refused: list[tuple[int, str]] = []
        aggregated: int = 0  # updates averaged in the last round

        def aggregate_train(self, server_round: int, replies):
            replies = list(replies)
            keep, updates, by_node = [], {}, {}
            for msg in replies:
                if msg.has_error():
                    log.warning("round %d: node %d replied with an error: %s", server_round,
                                msg.metadata.src_node_id, msg.error.reason)
                    continue
                node = msg.metadata.src_node_id
                n = float(msg.content["metrics"].get("num-examples", 0.0)) if "metrics" in msg.content else 0.0
                if n <= 0 or "arrays" not in msg.content:
                    log.info("round %d: node %d has nothing new; left out of the average", server_round, node)
                    continue
                updates[node] = {k: v.numpy() for k, v in msg.content["arrays"].items()}
                by_node[node] = msg
            self.refused = []
            for verdict in check_round(updates, self.reference, self.norm_factor):
                if verdict.accepted:
                    keep.append(by_node[verdict.node_id])
                else:
                    self.refused.append((verdict.node_id, verdict.reason))
            self.aggregated = len(keep)
            if not keep:
                log.warning("round %d: no update to aggregate; the global model stays as it was", server_round)
                return None, None
            return super().aggregate_train(server_round, keep)

    Checked.__name__ = f"Checked{base.__name__}"
    return Checked


def make_strategy(settings: FederationSettings):
    common = dict(min_train_nodes=settings.min_nodes, min_evaluate_nodes=settings.min_nodes,
                  min_available_nodes=settings.min_nodes, weighted_by_key=WEIGHTINGS[settings.weighting])
    if settings.strategy == "fedprox":
        strategy = _checked(FedProx)(proximal_mu=settings.proximal_mu, **common)
    elif settings.strategy == "fedmedian":
        strategy = _checked(FedMedian)(**common)
    elif settings.strategy == "fedtrimmedavg":
        strategy = _checked(FedTrimmedAvg)(beta=settings.trim_beta, **common)
    else:
        strategy = _checked(FedAvg)(**common)
    strategy.norm_factor = settings.norm_factor
    return strategy


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _metrics(prefix: str, replies) -> dict[str, float]:
    """Sum of each metric over the sites that replied (counts), as prefix-name."""
    out: dict[str, float] = {}
    for msg in replies:
        if msg.has_error() or "metrics" not in msg.content:
            continue
        for k, v in msg.content["metrics"].items():
            if isinstance(v, (int, float)):
                out[f"{prefix}-{k}"] = out.get(f"{prefix}-{k}", 0.0) + float(v)
    return out


def run_federation(grid: Grid, settings: FederationSettings, overrides: dict | None = None) -> None:
    """The whole run: resume or start, then rounds until settings.num_rounds."""
    store = RoundStore(settings)
    done, state, cfg = store.start()
    strategy = make_strategy(settings)
    model_config = json.dumps(cfg.to_dict(), sort_keys=True)
    for round_ in range(done + 1, settings.num_rounds + 1):
        started = time.time()
        signed = store.sign(state, cfg, round_ - 1)  # the model going out, as kept after round - 1
        base = {"model-config": model_config, "model-signature": json.dumps(signed), "model-version":
                signed["statement"]["model_sha256"][:12], "seed": settings.seed}
        arrays = ArrayRecord(state)
        nodes = list(grid.get_node_ids())
        log.info("round %d/%d: %d node(s) connected", round_, settings.num_rounds, len(nodes))

        query_cfg = ConfigRecord({**base, "server-round": round_, "strategy": settings.selection,
                                  "budget": settings.budget, "method": settings.method, "passes": settings.passes})
        queries = [Message(content=RecordDict({"arrays": arrays, "config": query_cfg}), message_type=MessageType.QUERY,
                           dst_node_id=n) for n in nodes]
        query_replies = list(grid.send_and_receive(queries, timeout=settings.timeout_s))
        t_query = time.time()

        strategy.reference = _numpy(state)
        train_cfg = ConfigRecord({**base, "local-steps": settings.local_steps, "lr": settings.lr,
                                  "proximal-mu": settings.proximal_mu})
        train_replies = list(grid.send_and_receive(strategy.configure_train(round_, arrays, train_cfg, grid),
                                                   timeout=settings.timeout_s))
        new_arrays, train_metrics = strategy.aggregate_train(round_, train_replies)
        if new_arrays is not None:
            state = new_arrays.to_torch_state_dict()
        t_train = time.time()

        row: dict = {"round": round_, **_metrics("query", query_replies), **_metrics("train", train_replies),
                     "updates-aggregated": strategy.aggregated, "updates-refused": len(strategy.refused)}
        path, signed = store.save(state, cfg, round_, {"train": dict(train_metrics or {})})
        eval_cfg = ConfigRecord({**base, "model-signature": json.dumps(signed),
                                 "model-version": signed["statement"]["model_sha256"][:12]})
        eval_replies = list(grid.send_and_receive(strategy.configure_evaluate(round_, ArrayRecord(state), eval_cfg, grid),
                                                  timeout=settings.timeout_s))
        agg_eval = strategy.aggregate_evaluate(round_, [m for m in eval_replies if m.has_error() or
                                                        float(m.content["metrics"].get("num-examples", 0)) > 0])
        row.update({f"sites-{k}": float(v) for k, v in dict(agg_eval or {}).items()})
        if settings.eval_data:
            from ugafl.server.evaluation import evaluate_model

            centres = [c.strip() for c in settings.eval_centres.split(",") if c.strip()]
            ev = evaluate_model(path, settings.eval_data, "test", centres, progress=False)
            row.update({f"server-dice-{c}": d for c, d in ev.centre_dice().items()})
        row.update({"seconds-query": round(t_query - started, 2), "seconds-train": round(t_train - t_query, 2),
                    "seconds-round": round(time.time() - started, 2)})
        store.append_metrics(row)
        store.commit(path, signed)  # last: a restart before this runs the round again
        log.info("round %d done in %.1f s: %s", round_, time.time() - started, row)


def make_server_app(overrides: dict | None = None) -> ServerApp:
    """The ServerApp; `overrides` (settings by their run config names) win over the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        configure()  # our INFO lines beside Flower's, in the SuperLink's log stream
        settings = FederationSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
        run_federation(grid, settings)

    return app


app = make_server_app()
