"""The coordinator's side of a round at 10, 50 and 200 sites (issue 18, "federations past five sites").

Runs OUR ServerApp (`server.flower_app.make_server_app`, hence `server.federation.rounds.run_federation`
with its real `GridSites`) on Flower's simulation engine (Ray backend, `flwr.simulation.run_simulation`,
as `server.flower_app.simulate` does, with the Ray options below made explicit) against a benchmark
ClientApp whose sites do trivial work: a query reply with the real site's metric names, a train reply
that is the incoming global weights plus small seeded Gaussian noise (seed, round, site), an
evaluate reply with metrics. No slides, no site workspaces, no training, no uncertainty.

Included, unchanged, per round: the signed outgoing statement (RoundStore.sign), the query, train and
evaluate messages through GridSites.send (one ArrayRecord per message, replies decoded to numpy),
rounds.aggregate (num-examples validation, update_checks.check_round: names, shapes, dtypes, finite,
leave-one-out norm outlier check; coordinator weighting; the configured strategy from
aggregation.AGGREGATIONS; aggregation.check_aggregate), the gate (gate.judge; with nothing to judge on
it keeps the aggregate), the round checkpoint (RoundStore.save, torch.save of the model) and its
signature, rounds.csv. Not included: server-side Dice on central validation slides (`eval_data` is
empty: it needs slides), site-side work of any kind, TLS and the network (simulation is in-memory),
central differential privacy (off, as by default), idle sites and refused updates (every site sends a
valid update).

Measured in the server process, by wrapping (not changing) product functions for the run's duration:
wall time of rounds.run_round; time Flower's Grid spent waiting for replies per message type; time in
rounds.aggregate and, inside it, in the checks (check_round + check_aggregate) and in the strategy;
checkpoint + signing time; tracemalloc (round 1 only, started at the train message, stopped after
aggregation; the times shown come from the later rounds): what is held when aggregation starts and
the extra peak during it; RSS at aggregation and its peak during aggregation (VmHWM reset through
/proc/self/clear_refs); bytes per site per round, each
message serialised as Flower's Message protobuf (metadata + RecordDict), sent and received.
The benchmark's own size measurement is timed and left out of "server own" time.

`--offline` also drives rounds.aggregate directly (no Flower) on synthetic replies for each strategy
and site count, for the benchmark model and the real default model (common.model.ModelConfig(), a
MONAI UNet with channels (16, 32, 64, 128, 256)), beside a running-sum FedAvg sketch (not product code)
that holds one update at a time, to show what streaming would save.

    python benchmarks/federation_scale.py --sites 10,50,200 --rounds 2 --params 100000
    python benchmarks/federation_scale.py --sites 10 --rounds 1 --ray-address 127.0.0.1:6390  # an existing Ray cluster

Ray on a small machine: Flower makes floor(node CPUs / cpus-per-site) actors per Ray node, and every
virtual site's message is run by one of them in turn. `--cpus-per-site 0.5` with `--ray-num-cpus 2`
gives 4 actors on 2 cores; with `--ray-address` the cluster's own CPU counts decide.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path


def _blas_threads_early() -> None:
    """--blas-threads N must be in the environment before numpy loads OpenBLAS (and the children inherit it)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--blas-threads=") else \
            (argv[i + 1] if arg == "--blas-threads" and i + 1 < len(argv) else None)
        if value is not None and value.isdigit() and int(value) > 0:
            for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[key] = value


_blas_threads_early()

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve()
QUERY_METRICS = ("slides-scored", "slides-failed", "patches-scored", "queued", "corrected-now", "score-mean",
                 "score-max", "queue-pending", "queue-in-review", "queue-corrected", "queue-rejected")
MB = 1e6


# ---------------------------------------------------------------------------- the benchmark sites

def _bench_answer(msg, context, noise: float, tag_nodes: bool):
    """A site that does nothing: the real site's metric names, and for train the incoming weights
    plus N(0, noise²) seeded by (seed, round, site). `tag_nodes`: also a "ray-node" metric naming
    the Ray node that ran it (the benchmark counts and removes it before the round sees the reply)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    config = msg.content["config"]
    site = int(context.node_config["partition-id"])
    round_, seed = int(config["server-round"]), int(config["seed"])
    examples = float(10 + site % 7)
    kind = msg.metadata.message_type
    arrays = None
    if kind == "query":
        metrics = {k: 1.0 for k in QUERY_METRICS}
    elif kind == "train":
        rng = np.random.default_rng([seed, round_, site])
        arrays = {}
        for name, value in msg.content["arrays"].items():
            a = value.numpy()
            if np.issubdtype(a.dtype, np.floating):
                a = a + rng.normal(0.0, noise, a.shape).astype(a.dtype)
            arrays[name] = Array(np.ascontiguousarray(a))
        metrics = {"num-examples": examples, "site-weight": 1.0, "new-corrections": 5.0, "loss": 0.3, "seconds": 0.0}
    else:
        metrics = {"num-examples": examples, "site-weight": 1.0, "dice": 0.8}
    if tag_nodes:
        import ray

        metrics["ray-node"] = float(int(ray.get_runtime_context().get_node_id()[:8], 16))
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content=content, reply_to=msg)


def make_bench_client_app(noise: float, tag_nodes: bool = False):
    """The benchmark ClientApp (numpy and flwr only: the Ray actors never import torch)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg, context):
        return _bench_answer(msg, context, noise, tag_nodes)

    @app.train()
    def train(msg, context):
        return _bench_answer(msg, context, noise, tag_nodes)

    @app.evaluate()
    def evaluate(msg, context):
        return _bench_answer(msg, context, noise, tag_nodes)

    return app


# ---------------------------------------------------------------------------- the model

def model_config(params: str):
    """`real`: the default ModelConfig; a number: the UNet (c, 2c, 4c[, 8c[, 16c]]) nearest to it."""
    from ugafl.common.model import ModelConfig

    if params == "real":
        return ModelConfig()
    target = int(params)
    best = None
    for depth in (3, 4, 5):
        for c in range(1, 65):
            channels = tuple(c * 2 ** i for i in range(depth))
            n = unet_params(channels)
            if best is None or abs(n - target) < abs(best[0] - target):
                best = (n, channels)
            if n > target:
                break
    return ModelConfig(channels=best[1])


def unet_params(channels: tuple[int, ...]) -> int:
    from ugafl.common.model import ModelConfig, build_model

    return sum(p.numel() for p in build_model(ModelConfig(channels=channels)).parameters())


def model_arrays(cfg) -> dict[str, np.ndarray]:
    from ugafl.common.model import build_model
    from ugafl.common.wire import unique_state

    return {k: v.numpy().copy() for k, v in unique_state(build_model(cfg)).items()}


# ---------------------------------------------------------------------------- measuring

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Rss:
    """The process's RSS and a resettable peak (VmHWM, reset by writing 5 to /proc/self/clear_refs)."""

    def __init__(self):
        self.overall_kb = 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def now_mb(self) -> float:
        return _status_kb("VmRSS") * 1e3 / MB

    def reset_peak(self) -> None:
        self.overall_kb = max(self.overall_kb, _status_kb("VmHWM"))
        if self.resettable:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        return _status_kb("VmHWM") * 1e3 / MB

    def overall_mb(self) -> float:
        return max(self.overall_kb, _status_kb("VmHWM")) * 1e3 / MB


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


class Sizer:
    """A Flower Message's size as its protobuf (flwr.proto.message_pb2.Message: metadata + content),
    the content of a shared outgoing RecordDict measured once."""

    def __init__(self):
        from flwr.common.serde import metadata_to_proto, recorddict_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        self._meta, self._content, self._proto = metadata_to_proto, recorddict_to_proto, ProtoMessage
        self._cache: dict[int, tuple[object, int]] = {}

    def content(self, msg) -> int:
        if not msg.has_content():
            return 0
        key = id(msg.content)
        if key not in self._cache or self._cache[key][0] is not msg.content:
            self._cache = {key: (msg.content, self._content(msg.content).ByteSize())}
        return self._cache[key][1]

    def message(self, msg) -> int:
        if not msg.has_content():  # an error reply: measure it whole
            from flwr.common.serde import message_to_proto

            return message_to_proto(msg).ByteSize()
        meta = self._proto(metadata=self._meta(msg.metadata)).ByteSize()
        content = self.content(msg)
        return meta + 1 + _varint_len(content) + content  # field 2 (content): tag, length, bytes


class Probe:
    """What the wrappers record, per round."""

    def __init__(self, use_tracemalloc: bool):
        """`use_tracemalloc`: trace round 1 only (its time is Ray's start-up anyway); the later rounds,
        whose times the table shows, run without tracemalloc's overhead."""
        self.round = 0
        self.rows: dict[int, dict] = defaultdict(lambda: defaultdict(float))
        self.sent: dict[tuple[int, int], int] = defaultdict(int)  # (round, site) -> bytes
        self.received: dict[tuple[int, int], int] = defaultdict(int)
        self.content: dict[tuple[str, int, int], int] = {}  # (direction-type, round, site) -> RecordDict bytes
        self.by_type: dict[str, list[int]] = defaultdict(list)
        self.rss = Rss()
        self.sizer = Sizer()
        self.use_tracemalloc = use_tracemalloc
        self.cluster: dict = {}
        self.nodes: dict[str, int] = defaultdict(int)  # Ray node id (first 8 hex digits) -> ClientApp runs

    def add(self, key: str, value: float) -> None:
        self.rows[self.round][key] += value

    def put(self, key: str, value: float) -> None:
        self.rows[self.round][key] = value


class MeasuringGrid:
    """Flower's Grid as GridSites sees it (push, then pulls), timing the wait and sizing every message."""

    def __init__(self, grid, probe: Probe):
        self.grid = grid
        self.probe = probe

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        """GridSites pushes a message type's messages at once, then pulls their replies."""
        probe = self.probe
        messages = list(messages)
        self.kind = kind = messages[0].metadata.message_type if messages else "?"
        if kind == "train" and probe.use_tracemalloc and probe.round == 1:  # from here to the end of aggregation
            tracemalloc.start()
            probe.rss.reset_peak()
        self.started, self.measured = time.perf_counter(), 0.0
        ids = list(self.grid.push_messages(messages))
        measuring = time.perf_counter()
        self.dst = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
        for m in messages:
            size = probe.sizer.message(m)
            probe.sent[(probe.round, int(m.metadata.dst_node_id))] += size
            probe.by_type[f"sent-{kind}"].append(size)
            probe.content[(f"sent-{kind}", probe.round, int(m.metadata.dst_node_id))] = probe.sizer.content(m)
        self.measured += time.perf_counter() - measuring
        probe.add("measure-s", time.perf_counter() - measuring)
        return ids

    def pull_messages(self, message_ids):
        probe, kind = self.probe, self.kind
        answers = list(self.grid.pull_messages(message_ids))
        # the grid's time for this message type so far: from the push to this pull, less our sizing
        probe.put(f"grid-{kind}-s", time.perf_counter() - self.started - self.measured)
        if kind == "train" and tracemalloc.is_tracing():
            probe.put("train-receive-traced-peak-mb", tracemalloc.get_traced_memory()[1] / MB)
        measuring = time.perf_counter()
        for m in answers:
            size = probe.sizer.message(m)
            site = self.dst.get(m.metadata.reply_to_message_id, -1)
            probe.received[(probe.round, site)] += size
            probe.by_type[f"received-{kind}"].append(size)
            probe.content[(f"received-{kind}", probe.round, site)] = probe.sizer.content(m)
            if m.has_content() and "metrics" in m.content and "ray-node" in m.content["metrics"]:
                probe.nodes[f"{int(m.content['metrics']['ray-node']):08x}"] += 1
                del m.content["metrics"]["ray-node"]
        spent = time.perf_counter() - measuring
        self.measured += spent
        probe.add("measure-s", spent)
        if kind == "train" and tracemalloc.is_tracing():
            tracemalloc.reset_peak()  # the sizing above is ours, not the server's
        return answers


@contextmanager
def _patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _timed(probe: Probe, key: str, fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            probe.add(key, time.perf_counter() - started)

    return wrapper


@contextmanager
def instrumented(probe: Probe, aggregation: str):
    """Wrap (for this block only) the product functions whose time and memory we report."""
    from contextlib import ExitStack

    from ugafl.server import flower_app
    from ugafl.server.federation import aggregation as agg_module
    from ugafl.server.federation import checkpoints, rounds

    real_grid_sites = flower_app.GridSites

    class MeasuredGridSites(real_grid_sites):
        def __init__(self, grid, timeout_s):
            super().__init__(MeasuringGrid(grid, probe), timeout_s)

        def send(self, message_type, arrays, config, sites, on_reply=None):
            started = time.perf_counter()
            replies = super().send(message_type, arrays, config, sites, on_reply)
            probe.add("sites-send-s", time.perf_counter() - started)
            if not probe.cluster:  # after a first exchange Ray is up
                probe.cluster = _ray_resources()
            if message_type == "train":
                if tracemalloc.is_tracing():
                    probe.put("train-decode-traced-peak-mb", tracemalloc.get_traced_memory()[1] / MB)
                probe.put("train-send-rss-peak-mb", probe.rss.peak_mb())
                arrays = [a for r in replies if r.arrays for a in r.arrays.values()]
                probe.put("replies-held-mb", sum(a.nbytes for a in arrays if not isinstance(a, np.memmap)) / MB)
                probe.put("replies-spooled-mb", sum(a.nbytes for a in arrays if isinstance(a, np.memmap)) / MB)
                probe.put("accepted-replies", sum(r.error is None for r in replies))
            return replies

    real_run_round, real_aggregate = rounds.run_round, rounds.aggregate

    def run_round(sites, settings, store, state, cfg, round_):
        probe.round = round_
        started = time.perf_counter()
        out = real_run_round(sites, settings, store, state, cfg, round_)
        probe.put("wall-s", time.perf_counter() - started)
        return out

    def aggregate(round_, replies, reference, settings):
        if tracemalloc.is_tracing():
            probe.put("agg-entry-traced-mb", tracemalloc.get_traced_memory()[0] / MB)
            tracemalloc.reset_peak()
        probe.put("agg-entry-rss-mb", probe.rss.now_mb())
        probe.rss.reset_peak()
        started = time.perf_counter()
        out = real_aggregate(round_, replies, reference, settings)
        probe.put("aggregate-s", time.perf_counter() - started)
        probe.put("agg-rss-peak-mb", probe.rss.peak_mb())
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            probe.put("agg-extra-traced-peak-mb", (peak - probe.rows[round_]["agg-entry-traced-mb"] * MB) / MB)
            tracemalloc.stop()
        probe.put("aggregated", out.accepted)
        probe.put("refused", len(out.refused))
        return out

    with ExitStack() as stack:
        stack.enter_context(_patched(flower_app, "GridSites", MeasuredGridSites))
        stack.enter_context(_patched(rounds, "run_round", run_round))
        stack.enter_context(_patched(rounds, "aggregate", aggregate))
        stack.enter_context(_patched(rounds, "check_round", _timed(probe, "checks-s", rounds.check_round)))
        stack.enter_context(_patched(rounds, "check_aggregate", _timed(probe, "checks-s", rounds.check_aggregate)))
        stack.enter_context(_patched(rounds, "judge", _timed(probe, "gate-s", rounds.judge)))
        stack.enter_context(_patched(checkpoints.RoundStore, "save",
                                     _timed(probe, "checkpoint-sign-s", checkpoints.RoundStore.save)))
        stack.enter_context(_patched(checkpoints.RoundStore, "sign",
                                     _timed(probe, "checkpoint-sign-s", checkpoints.RoundStore.sign)))
        strategies = agg_module.AGGREGATIONS
        timed_strategy = _timed(probe, "strategy-s", strategies[aggregation])
        stack.enter_context(_patched_item(strategies, aggregation, timed_strategy))
        yield


@contextmanager
def _patched_item(mapping, key, value):
    old = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = old


def _ray_resources() -> dict:
    try:
        import ray

        if ray.is_initialized():
            return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                    "cpus": ray.cluster_resources().get("CPU", 0)}
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {}


# ---------------------------------------------------------------------------- one simulation

def backend_config(args) -> dict:
    init_args: dict = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if args.ray_address:
        init_args["address"] = args.ray_address  # Ray refuses num_cpus when attaching to a cluster
    else:
        init_args["num_cpus"] = args.ray_num_cpus
    return {"client_resources": {"num_cpus": args.cpus_per_site, "num_gpus": 0.0}, "init_args": init_args}


def run_one(n_sites: int, args) -> dict:
    """One simulation of `args.rounds` rounds with `n_sites` sites, in this process."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from ugafl.common.checkpoint import save_checkpoint
    from ugafl.common.model import build_model
    from ugafl.common.signing import generate_signing_key
    from ugafl.server.flower_app import make_server_app

    cfg = model_config(args.params)
    work = Path(args.workdir) / f"sites-{n_sites}"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLWR_HOME", str(work / "flwr-home"))
    server_log = logging.FileHandler(work / "server.log")  # `configure()` then adds no stderr handler
    server_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("ugafl").addHandler(server_log)
    model = build_model(cfg)
    save_checkpoint(work / "central.pt", model, cfg)
    generate_signing_key(work / "signing.key", work / "signing.pub")
    arrays = model_arrays(cfg)
    overrides = {"central-checkpoint": str(work / "central.pt"), "out-dir": str(work / "out"),
                 "signing-key": str(work / "signing.key"), "num-rounds": args.rounds, "min-nodes": n_sites,
                 "aggregation": args.aggregation, "seed": args.seed, "run-name": "federation-scale"}
    probe = Probe(use_tracemalloc=not args.no_tracemalloc)
    started = time.perf_counter()
    with instrumented(probe, args.aggregation):
        run_simulation(server_app=make_server_app(overrides),
                       client_app=make_bench_client_app(args.noise, bool(args.ray_address)),
                       num_supernodes=n_sites, backend_config=backend_config(args))
    total = time.perf_counter() - started
    rounds = {r: dict(v) for r, v in sorted(probe.rows.items()) if r > 0}
    per_site = sorted({site for _, site in probe.sent})
    sent = [probe.sent[(r, s)] for r in rounds for s in per_site]
    received = [probe.received[(r, s)] for r in rounds for s in per_site]
    content: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for kind in sorted({k for k, _, _ in probe.content}):
        for r in rounds:
            content[kind][r] = sorted({v for (k, rr, _), v in probe.content.items() if k == kind and rr == r})
    return {"sites": n_sites, "rounds": rounds, "simulation-s": total,
            "model": {"channels": list(cfg.channels), "params": int(sum(a.size for a in arrays.values())),
                      "fp32-bytes": int(sum(a.nbytes for a in arrays.values())), "arrays": len(arrays),
                      "largest-array": int(max(a.size for a in arrays.values()))},
            "bytes": {"sent-per-site-round": sent, "received-per-site-round": received,
                      "by-type": {k: [min(v), max(v), len(v)] for k, v in probe.by_type.items()},
                      "content-sizes": content},
            "sites-seen": len(per_site), "ray": probe.cluster, "clientapp-runs-per-ray-node": dict(probe.nodes),
            "cpus-per-site": args.cpus_per_site,
            "ray-num-cpus": None if args.ray_address else args.ray_num_cpus, "ray-address": args.ray_address,
            "rss-overall-peak-mb": probe.rss.overall_mb(), "rss-peak-resettable": probe.rss.resettable,
            "rounds-csv": (work / "out" / "rounds.csv").read_text()}


# ---------------------------------------------------------------------------- offline: the aggregation alone

def streaming_fedavg(stream, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A sketch (not product code): Σ w·u / Σ w over (arrays, weight) pairs arriving one at a time, each
    checked (names, shapes, dtypes, finite) and its norm taken on arrival; float64 running sums."""
    from ugafl.server.federation.update_checks import check_arrays, delta_norm

    total, weight, norms = None, 0.0, []
    for update, w in stream:
        if check_arrays(update, reference):
            continue
        norms.append(delta_norm(update, reference))
        if total is None:
            total = {k: np.asarray(v, np.float64) * w for k, v in update.items()}
        else:
            for k, v in update.items():
                total[k] += np.asarray(v, np.float64) * w
        weight += w
    return {k: (v / weight).astype(reference[k].dtype) for k, v in total.items()}


def offline(cfg, label: str, sites: list[int], strategies: list[str], noise: float, seed: int) -> list[dict]:
    """rounds.aggregate on synthetic replies, per strategy and site count: time, what the replies
    hold, and tracemalloc's extra peak during aggregation; and the streaming sketch."""
    from ugafl.server.federation import rounds
    from ugafl.server.federation.settings import FederationSettings
    from ugafl.server.federation.sites import Reply

    logging.getLogger("ugafl").setLevel(logging.ERROR)
    reference = model_arrays(cfg)
    model_mb = sum(a.nbytes for a in reference.values()) / MB
    out = []
    for n in sites:
        def noisy(site: int) -> dict[str, np.ndarray]:
            rng = np.random.default_rng([seed, 1, site])
            return {k: v + rng.normal(0.0, noise, v.shape).astype(v.dtype) for k, v in reference.items()}

        for name in strategies:
            settings = FederationSettings(central_checkpoint="-", out_dir="-", signing_key="-", aggregation=name)
            tracemalloc.start()  # memory, traced
            replies = [Reply(s + 1, {"num-examples": 10.0}, noisy(s)) for s in range(n)]
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            result = rounds.aggregate(1, replies, reference, settings)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert result.accepted == n and result.arrays is not None, (name, n, result.refused)
            del result
            started = time.perf_counter()  # time, untraced
            result = rounds.aggregate(1, replies, reference, settings)
            seconds = time.perf_counter() - started
            out.append({"model": label, "sites": n, "strategy": name, "model-mb": model_mb, "held-mb": held / MB,
                        "extra-peak-mb": (peak - held) / MB, "total-peak-mb": peak / MB, "seconds": seconds})
            del replies, result
        tracemalloc.start()  # the sketch: updates made (received) one at a time
        streaming_fedavg(((noisy(s), 10.0) for s in range(n)), reference)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        updates = [noisy(s) for s in range(n)]  # its time, untraced, without making the updates
        started = time.perf_counter()
        streaming_fedavg(((u, 10.0) for u in updates), reference)
        seconds = time.perf_counter() - started
        del updates
        out.append({"model": label, "sites": n, "strategy": "streaming-fedavg (sketch)", "model-mb": model_mb,
                    "held-mb": 0.0, "extra-peak-mb": peak / MB, "total-peak-mb": peak / MB, "seconds": seconds})
    return out


# ---------------------------------------------------------------------------- the table

def _mean(rows: dict, key: str) -> float:
    values = [r.get(key, 0.0) for r in rows.values()]
    return statistics.fmean(values) if values else float("nan")


def summarise(result: dict) -> dict:
    """Means over the steady rounds (all but the first, whose query waits for Ray's actors to start;
    the first alone when there is one)."""
    first = result["rounds"][min(result["rounds"])]
    rows = {r: v for r, v in result["rounds"].items() if r > 1} or result["rounds"]
    sent, received = result["bytes"]["sent-per-site-round"], result["bytes"]["received-per-site-round"]
    grid = sum(_mean(rows, f"grid-{k}-s") for k in ("query", "train", "evaluate"))
    return {
        "sites": result["sites"],
        "round-1-s": first.get("wall-s", 0.0) - first.get("measure-s", 0.0),
        "wall-s": _mean(rows, "wall-s") - _mean(rows, "measure-s"),
        "grid-wait-s": grid,
        "server-own-s": _mean(rows, "wall-s") - _mean(rows, "measure-s") - grid,
        "encode-decode-s": _mean(rows, "sites-send-s") - _mean(rows, "measure-s") - grid,
        "aggregate-s": _mean(rows, "aggregate-s"),
        "checks-s": _mean(rows, "checks-s"),
        "strategy-s": _mean(rows, "strategy-s"),
        "checkpoint-sign-s": _mean(rows, "checkpoint-sign-s"),
        "replies-held-mb": _mean(rows, "replies-held-mb"),  # in memory
        "replies-spooled-mb": _mean(rows, "replies-spooled-mb"),  # on disk, read memory-mapped
        "agg-entry-traced-mb": first.get("agg-entry-traced-mb", float("nan")),  # traced in round 1 only
        "agg-extra-traced-peak-mb": first.get("agg-extra-traced-peak-mb", float("nan")),
        "train-decode-traced-peak-mb": max(first.get("train-receive-traced-peak-mb", float("nan")),
                                           first.get("train-decode-traced-peak-mb", float("nan"))),
        "agg-entry-rss-mb": _mean(rows, "agg-entry-rss-mb"),
        "agg-rss-peak-mb": _mean(rows, "agg-rss-peak-mb"),
        "rss-overall-peak-mb": result["rss-overall-peak-mb"],
        "sent-b": statistics.fmean(sent), "sent-spread-b": max(sent) - min(sent),
        "received-b": statistics.fmean(received), "received-spread-b": max(received) - min(received),
        "aggregated": _mean(rows, "aggregated"), "refused": _mean(rows, "refused"),
    }


TIME_COLUMNS = [("round-1-s", "round 1 s", "{:.2f}"), ("wall-s", "wall s/rnd", "{:.2f}"),
                ("grid-wait-s", "grid wait s", "{:.2f}"), ("server-own-s", "server own s", "{:.3f}"),
                ("encode-decode-s", "send-own s", "{:.3f}"), ("aggregate-s", "aggregate s", "{:.4f}"),
                ("checks-s", "checks s", "{:.4f}"),
                ("strategy-s", "strategy s", "{:.4f}"), ("checkpoint-sign-s", "ckpt+sign s", "{:.4f}")]
MEMORY_COLUMNS = [("replies-held-mb", "replies MB", "{:.2f}"), ("replies-spooled-mb", "spooled MB", "{:.2f}"),
                  ("agg-entry-traced-mb", "held@agg MB", "{:.2f}"),
                  ("agg-extra-traced-peak-mb", "agg +peak MB", "{:.2f}"),
                  ("train-decode-traced-peak-mb", "recv peak MB", "{:.2f}"),
                  ("agg-entry-rss-mb", "RSS@agg MB", "{:.0f}"), ("agg-rss-peak-mb", "RSS pk agg MB", "{:.0f}"),
                  ("rss-overall-peak-mb", "RSS pk run MB", "{:.0f}"),
                  ("sent-b", "sent B/site/rnd", "{:,.0f}"), ("received-b", "recv B/site/rnd", "{:,.0f}")]


def table(summaries: list[dict], columns) -> str:
    width = {key: max(len(title), 11) for key, title, _ in columns}
    lines = ["sites " + " ".join(f"{title:>{width[key]}}" for key, title, _ in columns)]
    for s in summaries:
        lines.append(f"{s['sites']:>5} " + " ".join(f"{fmt.format(s[key]):>{width[key]}}" for key, _, fmt in columns))
    base = summaries[0]
    for s in summaries[1:]:
        cells = []
        for key, _, _ in columns:
            ratio = s[key] / base[key] if base[key] else float("nan")
            cells.append(f"{ratio:>{width[key] - 1}.2f}x")
        lines.append(f"{str(s['sites']) + '/' + str(base['sites']):>5} " + " ".join(cells))
    return "\n".join(lines)


def offline_table(rows: list[dict]) -> str:
    lines = [f"{'model':<6} {'sites':>5} {'strategy':<27} {'replies held MB':>15} {'agg +peak MB':>12} "
             f"{'seconds':>8}"]
    for r in rows:
        lines.append(f"{r['model']:<6} {r['sites']:>5} {r['strategy']:<27} {r['held-mb']:>15.1f} "
                     f"{r['extra-peak-mb']:>12.1f} {r['seconds']:>8.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    from ugafl.server.federation.aggregation import AGGREGATION_NAMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", default="10,50,200", help="site counts, comma-separated (default 10,50,200)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per simulation (default 2)")
    p.add_argument("--params", default="100000",
                   help="model size: the MONAI UNet (c, 2c, 4c[, ...]) nearest this many parameters, or `real` "
                        "for the default ModelConfig (default 100000)")
    p.add_argument("--aggregation", default="fedavg", choices=AGGREGATION_NAMES, help="the run's strategy")
    p.add_argument("--noise", type=float, default=1e-3, help="std of the sites' noise on the weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus-per-site", type=float, default=0.5,
                   help="Ray CPUs per virtual site (Flower's client_resources num_cpus): actors per Ray node = "
                        "floor(node CPUs / this); fractional values give more actors than cores (default 0.5)")
    p.add_argument("--ray-num-cpus", type=int, default=os.cpu_count() or 1,
                   help="CPUs of the local Ray instance Flower starts (default: this machine's cores)")
    p.add_argument("--ray-address", default="",
                   help="attach to a running Ray cluster (host:port of its head, from `ray start --head`) "
                        "instead of starting a local instance; --ray-num-cpus is then not used")
    p.add_argument("--blas-threads", type=int, default=0,
                   help="set OMP/OPENBLAS/MKL_NUM_THREADS in the simulation's process (0: leave them as they are)")
    p.add_argument("--no-tracemalloc", action="store_true", help="skip tracemalloc (time without its overhead)")
    p.add_argument("--offline", default="bench,real",
                   help="also run rounds.aggregate without Flower for these models: bench, real, both "
                        "(default), or none")
    p.add_argument("--strategies", default="fedavg,fedmedian,fedtrimmedavg", help="strategies for --offline")
    p.add_argument("--timeout-s", type=int, default=1800, help="limit per simulation, s")
    p.add_argument("--workdir", default="", help="keep run folders (logs, rounds.csv) here; default a temp folder")
    p.add_argument("--json", default="", help="write every measurement here")
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: run one simulation
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child(n_sites: int, args, workdir: str) -> dict:
    """One simulation in a fresh process (Ray and Flower start clean; RSS is this run's only)."""
    out = Path(workdir) / f"result-{n_sites}.json"
    cmd = [sys.executable, str(HERE), "--one", str(n_sites), "--out", str(out), "--workdir", workdir,
           "--rounds", str(args.rounds), "--params", args.params, "--aggregation", args.aggregation,
           "--noise", str(args.noise), "--seed", str(args.seed), "--cpus-per-site", str(args.cpus_per_site),
           "--ray-num-cpus", str(args.ray_num_cpus), "--ray-address", args.ray_address]
    if args.no_tracemalloc:
        cmd.append("--no-tracemalloc")
    env = dict(os.environ)  # with --blas-threads already applied (_blas_threads_early)
    log = Path(workdir) / f"simulation-{n_sites}.log"
    with log.open("w") as stream:
        proc = subprocess.Popen(cmd, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the simulation and its Ray children too
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    if rc != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        server = Path(workdir) / f"sites-{n_sites}" / "server.log"
        if server.is_file():
            tail += "\n-- server.log --\n" + "\n".join(server.read_text().splitlines()[-20:])
        raise SystemExit(f"the simulation with {n_sites} sites failed ({rc}); see {log}:\n{tail}")
    result = json.loads(out.read_text())
    result["rounds"] = {int(r): v for r, v in result["rounds"].items()}  # JSON keys are strings
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that a stopped benchmark stops its simulation
    if args.one:
        result = run_one(args.one, args)
        Path(args.out).write_text(json.dumps(result))
        return
    sites = [int(s) for s in args.sites.split(",") if s.strip()]
    tmp = None
    if not args.workdir:
        tmp = tempfile.TemporaryDirectory(prefix="ugafl-fedscale-")
        args.workdir = tmp.name
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    threads = f"BLAS threads {args.blas_threads}" if args.blas_threads else "BLAS threads as the environment sets"
    print(f"federation scale benchmark: sites {sites}, {args.rounds} round(s), strategy {args.aggregation}, {threads}, "
          f"load average at start {load[0]:.2f} on {os.cpu_count()} cores")
    results = []
    for n in sites:
        print(f"  simulating {n} sites ...", flush=True)
        results.append(_child(n, args, args.workdir))
    model = results[0]["model"]
    ray = results[0]["ray"]
    actors = (f"{int(ray['cpus'] // args.cpus_per_site)} actors on {ray['nodes']} Ray node(s), {ray['cpus']:g} CPUs"
              if ray else "Ray resources not seen")
    print(f"\nmodel: MONAI UNet channels {tuple(model['channels'])}, {model['params']:,} parameters, "
          f"{model['arrays']} arrays, fp32 {model['fp32-bytes']:,} B; Ray: cpus-per-site {args.cpus_per_site:g}, "
          f"{actors}; load average now {os.getloadavg()[0]:.2f}")
    for r in results:
        if r["clientapp-runs-per-ray-node"]:
            print(f"  {r['sites']} sites: ClientApp runs per Ray node (node id prefix): "
                  f"{r['clientapp-runs-per-ray-node']}")
    summaries = [summarise(r) for r in results]
    print("\ntime per round (round 1 includes Ray's actor start-up; the rest: mean over rounds 2.., or round 1 "
          "when alone; wall and server-own exclude the benchmark's message sizing; send-own: GridSites.send less "
          "Flower's wait (building messages, decoding replies); aggregate includes checks and strategy):")
    print(table(summaries, TIME_COLUMNS))
    print("\nmemory in the server process (traced = tracemalloc in round 1 only, from the train message to the end of "
          "aggregation; with --rounds 1 the times above carry its overhead too) "
          "and bytes per site per round (Message protobuf, query + train + evaluate):")
    print(table(summaries, MEMORY_COLUMNS))
    for s in summaries:
        print(f"  {s['sites']} sites: updates aggregated {s['aggregated']:.0f}, refused {s['refused']:.0f}; "
              f"sent {s['sent-b'] / model['fp32-bytes']:.3f}x and received "
              f"{s['received-b'] / model['fp32-bytes']:.3f}x "
              f"the fp32 weights per site per round; spread across sites: sent {s['sent-spread-b']} B, "
              f"received {s['received-spread-b']} B")
    offline_rows: list[dict] = []
    wanted = {"both": ["bench", "real"], "none": []}.get(args.offline, [m for m in args.offline.split(",") if m])
    if wanted:
        from ugafl.common.model import ModelConfig

        configs = {"bench": model_config(args.params), "real": ModelConfig()}
        for label in wanted:
            offline_rows += offline(configs[label], label, sites, args.strategies.split(","), args.noise, args.seed)
        print("\nrounds.aggregate alone (no Flower), one round, memory by tracemalloc, seconds from a second, untraced "
              "call; 'replies held' is what the list of "
              "replies holds when aggregation starts, 'agg +peak' what aggregation adds on top:")
        print(offline_table(offline_rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "summaries": summaries,
                                               "offline": offline_rows}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
