"""The federation on Flower's simulation engine (Ray), with our real ServerApp and ClientApp, on a
small synthetic dataset of four centres and a small central model:

- a clean run: rounds complete, checkpoints are signed, the sites' corrections come from the
  simulated annotator, and every reply any site sent holds only model arrays of the expected
  names and shapes and scalar metrics (no pixels, no slide names, no paths);
- a faulty run: one site sends NaN weights, one a wrong shape, one receives a tampered model;
  the server refuses the first two, the third site refuses the model, and the round completes
  with the good site;
- a restarted coordinator continues after the last completed round;
- the same round as plain code, with the sites' handlers called in-process (no Flower): the
  aggregate is exactly the FedAvg of the accepted updates, a poisoned update is refused.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from federation_helpers import SMALL_CENTRES, SMALL_MODEL, check_outboxes
from ugafl.common.central_bank import CentralConfig
from ugafl.common.config import RunConfig
from ugafl.simulations.in_process import InProcessSites

pytestmark = pytest.mark.slow

CENTRES = SMALL_CENTRES  # Flower partition ids 0..3 in this order
MODEL = SMALL_MODEL
FEDERATION = {"num_rounds": 2, "budget": 2, "method": "tta", "passes": 2, "local_steps": 8, "lr": 0.001,
              "cpus_per_site": 1}


@pytest.fixture(scope="module")
def dataset(small_federation_data) -> tuple[Path, Path]:
    return small_federation_data


def run_config(**federation) -> RunConfig:
    return RunConfig(path=None, model=MODEL, central=CentralConfig(centre="RUMC"), federation={**FEDERATION, **federation})


def describe(content) -> dict:
    """A Flower reply's records, described as the sites' outboxes describe them (array names,
    dtypes, shapes and digest; metric values), read from the Flower message itself: its arrays
    travel packed (common.wire_pack) and nothing else travels beside the packing."""
    from flwr.app import ArrayRecord

    from ugafl.common.signing import model_digest
    from ugafl.common.wire_pack import INDEX, PREFIX, unpack_arrays

    out: dict = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            wire = {k: v.numpy() for k, v in record.items()}
            assert INDEX in wire and all(k == INDEX or k.startswith(PREFIX) for k in wire), sorted(wire)
            arrays = unpack_arrays(wire)
            out[name] = {"type": "ArrayRecord", "arrays": {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()},
                         "sha256": model_digest(arrays)}
        else:
            out[name] = {"type": type(record).__name__, "values": dict(record.items())}
    return out


def make_capture(folder: Path):
    """A Flower mod that writes every reply a ClientApp returns, as it leaves the app, to
    FOLDER/<partition id>.jsonl: an independent record to hold the sites' outboxes against."""

    def capture(msg, context, call_next):
        reply = call_next(msg, context)
        entry = {"type": msg.metadata.message_type,
                 "records": "error" if reply.has_error() else describe(reply.content)}
        with open(folder / f"{int(context.node_config['partition-id'])}.jsonl", "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        return reply

    return capture


def test_a_clean_run_resumes_and_sends_only_weights_and_scalar_metrics(dataset, tmp_path: Path, caplog) -> None:
    from ugafl.client.queue.store import CorrectionQueue
    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.common.signing import load_public_key, read_signature, verify_model
    from ugafl.server.federation.checkpoints import round_path
    from ugafl.common.wire import unique_state
    from ugafl.simulations.federated import run_federated

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the mod travels to the Ray workers
    data, central = dataset
    run_dir = tmp_path / "run"
    captured = tmp_path / "captured"
    captured.mkdir()
    mods = [make_capture(captured)]
    run_federated(run_config(num_rounds=1), run_dir, central, data, client_mods=mods)
    out = run_dir / "federated"
    first = (out / "round-0001.pt").read_bytes()
    # The coordinator restarts with two rounds: it continues after round 1 instead of starting over.
    with caplog.at_level(logging.INFO):
        result = run_federated(run_config(num_rounds=2), run_dir, central, data, client_mods=mods)
    assert "resuming after round 1" in caplog.text
    assert (out / "round-0001.pt").read_bytes() == first  # round 1 was not run again
    assert [line.split(",")[0] for line in (out / "rounds.csv").read_text().splitlines()[1:]] == ["1", "2"]

    # Rounds completed, each checkpoint signed by the coordinator.
    public = load_public_key(run_dir / "coordinator" / "signing.pub")
    for r in (0, 1, 2):
        state = unique_state(load_checkpoint(round_path(out, r)).model)
        assert verify_model(state, read_signature(round_path(out, r)), [public], f"round {r}")["round"] == r
    rows = (out / "rounds.csv").read_text().splitlines()
    assert len(rows) == 3 and "server-dice-RUMC" in rows[0]
    assert set(result["summary"]["after"]) == set(CENTRES) and (out / "federated.png").stat().st_size > 10_000
    assert "others" in (out / "dice_before_after.txt").read_text()

    # The external sites queued and (simulated annotator) corrected 2 patches per round; the central site none.
    for i, centre in enumerate(CENTRES):
        with CorrectionQueue(run_dir / "sites" / str(i) / "ws") as q:
            assert q.counts()["corrected"] == (0 if centre == "RUMC" else 4), centre

    # Privacy: every reply of every site, as its outbox recorded it.
    workspaces = [run_dir / "sites" / str(i) / "ws" for i in range(len(CENTRES))]
    entries = check_outboxes(workspaces, central, data, [data, run_dir])
    for i, ws in enumerate(workspaces):  # the outbox holds exactly what left each ClientApp
        sent = sorted(json.dumps([e["type"], e["records"]], sort_keys=True) for e in entries if e["workspace"] == ws)
        seen = sorted(json.dumps([c["type"], c["records"]], sort_keys=True)
                      for c in map(json.loads, (captured / f"{i}.jsonl").read_text().splitlines()))
        assert sent == seen, CENTRES[i]
    kinds = {(str(e["workspace"]), e["type"]) for e in entries}
    assert kinds == {(str(ws), t) for ws in workspaces for t in ("query", "train", "evaluate")}
    # Sites with nothing new send no weights: RST had 2 new corrections in each round, so it sent weights twice.
    assert sum(1 for e in entries if e["workspace"] == workspaces[3] and e["type"] == "train" and "arrays" in e["records"]) == 2


BEHAVIOUR = {1: "nan", 2: "shape", 3: "tamper"}  # by partition id: UMCU, CWZ, RST


def misbehave(msg, context, call_next):
    """A Flower mod: partition 3's incoming model is altered in transit; partitions 1 and 2 send
    back a NaN / a wrong-shape update."""
    from flwr.app import Array, ArrayRecord

    from ugafl.common.wire_pack import pack_arrays, unpack_arrays

    def unpacked(record) -> dict:
        return {k: v.copy() for k, v in unpack_arrays({k: a.numpy() for k, a in record.items()}).items()}

    def packed(arrays: dict):
        return ArrayRecord({k: Array(v) for k, v in pack_arrays(arrays).items()})

    role = BEHAVIOUR.get(int(context.node_config["partition-id"]))
    if role == "tamper" and "arrays" in msg.content:
        arrays = unpacked(msg.content["arrays"])
        arrays[next(iter(arrays))].flat[0] += 0.5
        msg.content["arrays"] = packed(arrays)
    reply = call_next(msg, context)
    if role in ("nan", "shape") and msg.metadata.message_type == "train" and not reply.has_error() \
            and "arrays" in reply.content:
        arrays = unpacked(reply.content["arrays"])
        name = next(k for k, v in arrays.items() if v.ndim == 4)
        if role == "nan":
            arrays[name].flat[3] = np.nan
        else:
            arrays[name] = arrays[name][:, :-1]
        reply.content["arrays"] = packed(arrays)
    return reply


def test_bad_updates_and_a_tampered_model_are_refused_and_the_round_completes(dataset, tmp_path: Path, caplog) -> None:
    import ray.cloudpickle

    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.simulations.federated import run_federated

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the mod travels to the Ray workers
    data, central = dataset
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        # the gate off: this is about the update checks (the gate could refuse the good site's update too)
        run_federated(run_config(num_rounds=1, gate=False), run_dir, central, data, client_mods=[misbehave])
    out = run_dir / "federated"
    row = (out / "rounds.csv").read_text().splitlines()
    header, values = row[0].split(","), row[1].split(",")
    got = dict(zip(header, values))
    assert got["updates-refused"] == "2" and got["updates-aggregated"] == "1", got
    assert "NaN or infinite value(s)" in caplog.text and "wrong shape for" in caplog.text
    # The site that got a tampered model refused it; the coordinator sees only a category and an
    # error id, and the detail is in the site's own record under that id.
    from ugafl.client.round.records import read_jsonl

    refusals = read_jsonl(run_dir / "sites" / "3" / "ws" / "federation" / "errors.jsonl")
    assert sorted(r["message"] for r in refusals) == ["evaluate", "query", "train"], refusals
    for refusal in refusals:
        assert refusal["category"] == "model refused" and "(tampered)" in refusal["detail"], refusal
        assert f"ugafl site error: model refused; error id {refusal['id']}" in caplog.text
    replied = [r.getMessage() for r in caplog.records if "replied to" in r.getMessage()]
    assert replied and not any("tampered" in line or "/" in line for line in replied), replied
    # The new global model is the good site's update alone: the very weights RUMC sent (its outbox
    # holds their digest; FedAvg of one update multiplies by 1.0, which is exact).
    from ugafl.common.signing import model_digest
    from ugafl.common.wire import unique_state

    sent = [json.loads(line) for line in (run_dir / "sites" / "0" / "ws" / "federation" / "outbox.jsonl")
            .read_text().splitlines()]
    [update] = [e["records"]["arrays"]["sha256"] for e in sent if e["type"] == "train" and "arrays" in e["records"]]
    state = unique_state(load_checkpoint(out / "round-0001.pt").model)
    assert model_digest(state) == update
    assert all(np.isfinite(v.numpy()).all() for v in state.values() if v.is_floating_point())
    rst_outbox = run_dir / "sites" / "3" / "ws" / "federation" / "outbox.jsonl"
    assert not rst_outbox.exists(), "the site that got a tampered model must not have replied with anything"


class RecordingSites(InProcessSites):
    """The in-process sites, keeping every reply in `sent`; `poison` maps a site id to a function
    applied to its train replies' arrays (a misbehaving site)."""

    def __init__(self, sites_dir: Path, poison: dict | None = None):
        super().__init__(sites_dir, run_id=7)
        self.poison = poison or {}
        self.sent: list[tuple[str, int, dict]] = []

    def reply(self, site, message_type, answer):
        from ugafl.server.federation.sites import Reply

        out = answer.arrays
        if out is not None and message_type == "train" and site in self.poison:
            out = self.poison[site](out)
        self.sent.append((message_type, site, {"metrics": answer.metrics, "arrays": out}))
        return Reply(site, answer.metrics, out)


def test_the_round_runs_as_plain_code_without_flower(dataset, tmp_path: Path, caplog) -> None:
    """The coordinator's round and the sites' handlers, wired together in one process: the round
    aggregates exactly the FedAvg of the accepted updates (one vote per site), refuses a poisoned
    one, resumes after its last complete round, and rounds.csv's query score mean is the mean
    score of the patches queued (not a sum of the sites' means). With the acceptance gate on, an
    aggregate that does worse on the sites' held-out corrections is refused and the round keeps
    the previous model."""
    import csv

    from ugafl.client.queue.store import CorrectionQueue
    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.common.wire import unique_state
    from ugafl.server.federation.rounds import run_federation
    from ugafl.server.federation.settings import FederationSettings
    from ugafl.simulations.federated import prepare_sites

    data, central = dataset
    sites_dir, centres, _ = prepare_sites(tmp_path, data, "RUMC", list(CENTRES))
    out = tmp_path / "federated"
    settings = {"central-checkpoint": str(central), "out-dir": str(out), "signing-key": str(tmp_path / "coordinator" / "signing.key"),
                "num-rounds": 1, "budget": 2, "passes": 2, "local-steps": 8, "lr": 0.001, "min-nodes": 4,
                "weighting": "sites", "run-name": "plain", "gate": False}
    sites = RecordingSites(sites_dir)
    run_federation(sites, FederationSettings.from_run_config(settings))

    trained = [entry["arrays"] for kind, _, entry in sites.sent if kind == "train" and entry["arrays"] is not None]
    assert len(trained) == 4  # the central site and three external sites, each with new corrections
    expected = {k: sum(t[k] * 0.25 for t in trained) for k in trained[0]}
    got = unique_state(load_checkpoint(out / "round-0001.pt").model)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-6, atol=1e-7, err_msg=name)
    row = list(csv.DictReader((out / "rounds.csv").open()))[-1]
    scores = []
    for ws in (sites_dir / str(i) / "ws" for i in range(1, 4)):
        with CorrectionQueue(ws) as queue:
            scores += [item.score for item in queue.list() if item.round == 1]
    assert len(scores) == 6 and float(row["query-queued"]) == 6.0
    assert float(row["query-score-mean"]) == pytest.approx(np.mean(scores), rel=1e-6)
    assert float(row["query-score-max"]) == pytest.approx(max(scores), rel=1e-6)
    assert int(row["updates-aggregated"]) == 4 and int(row["updates-refused"]) == 0
    # The round's time by phase: the phases add up to the round, the slowest site's compute of
    # each message is inside its phase, and the overhead is the round minus that compute.
    phases = ("sign", "query", "train", "aggregate", "checkpoint", "evaluate", "server-eval")
    timing = {k: float(row[k]) for k in [f"seconds-{p}" for p in phases] + ["seconds-round", "seconds-overhead"]}
    assert sum(timing[f"seconds-{p}"] for p in phases) == pytest.approx(timing["seconds-round"], abs=0.05)
    compute = {m: float(row[f"{m}-seconds-compute"]) for m in ("query", "train", "evaluate")}
    for m in compute:
        assert 0 < compute[m] <= timing[f"seconds-{m}"] and float(row[f"{m}-seconds-startup"]) == 0.0
        assert float(row[f"{m}-seconds-site"]) == pytest.approx(compute[m])  # in process: no start-up
    assert timing["seconds-overhead"] == pytest.approx(
        timing["seconds-round"] - sum(compute.values()) - timing["seconds-server-eval"], abs=0.05)
    assert "sites-seconds-compute" not in row  # timings are not averaged into the sites' evaluation
    assert not any((out / "spool").iterdir())  # the updates were kept on disk for the round only

    # Round 2 with site 2 sending NaN weights: resumed after round 1, the poisoned update refused.
    first = (out / "round-0001.pt").read_bytes()
    poisoned = RecordingSites(sites_dir, poison={2: lambda arrays: {k: np.full_like(v, np.nan) for k, v in arrays.items()}})
    run_federation(poisoned, FederationSettings.from_run_config({**settings, "num-rounds": 2}))
    assert (out / "round-0001.pt").read_bytes() == first
    assert {kind for kind, _, _ in poisoned.sent} == {"query", "train", "evaluate"}
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert int(rows[1]["updates-refused"]) == 1
    kept = [entry["arrays"] for kind, site, entry in poisoned.sent if kind == "train" and site != 2 and entry["arrays"] is not None]
    got = unique_state(load_checkpoint(out / "round-0002.pt").model)
    assert int(rows[1]["updates-aggregated"]) == len(kept)
    name = next(iter(got))
    np.testing.assert_allclose(got[name].numpy(), sum(k[name] for k in kept) / len(kept), rtol=1e-5, atol=1e-6)

    # Round 3 with the gate on: site 2 sends an update that turns the aggregate's predictions
    # around (tumour for background). It is finite and, with the norm check opened wide, it is
    # averaged in; the sites then find the aggregate worse on their held-out corrections and RUMC
    # on its validation patches, so the coordinator keeps round 2's model and says so.
    second = unique_state(load_checkpoint(out / "round-0002.pt").model)
    final = [k for k in second if k.startswith("model.2.1.conv.unit0.conv.")]  # the last convolution

    def invert(arrays):  # its vote pulls the average of the last convolution to about -1x
        return {k: (-7 * second[k].numpy() if k in final else v) for k, v in arrays.items()}

    gated = RecordingSites(sites_dir, poison={2: invert})
    with caplog.at_level(logging.INFO):
        run_federation(gated, FederationSettings.from_run_config({**settings, "num-rounds": 3, "gate": True,
                                                                   "norm-factor": 1e6}))
    row = list(csv.DictReader((out / "rounds.csv").open()))[-1]
    assert row["round"] == "3" and int(row["updates-aggregated"]) == 4
    assert float(row["gate-held-after"]) < float(row["gate-held-before"])
    assert float(row["gate-val-after"]) < float(row["gate-val-before"]) - 0.01
    assert float(row["gate-kept"]) == 0.0
    assert "round 3: the gate refused the aggregate: held-out Dice" in caplog.text
    assert "the model of round 2 stays" in caplog.text
    third = unique_state(load_checkpoint(out / "round-0003.pt").model)
    assert all(np.array_equal(third[k].numpy(), second[k].numpy()) for k in second)
    evaluated = [e for kind, _, e in gated.sent if kind == "evaluate"]
    assert all("gate-held-tp" in e["metrics"] for e in evaluated[1:])  # the external sites judged the aggregate
    held = [e["metrics"] for kind, site, e in gated.sent if kind == "train" and site != 0]
    assert all(m["num-examples"] == 5.0 and "gate-incoming-held-tp" in m for m in held)  # 6 corrected, 1 held out
