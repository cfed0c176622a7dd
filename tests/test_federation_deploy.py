"""Our app on Flower's deployment engine, on loopback: a real SuperLink with TLS and SuperNode
authentication, three real SuperNodes with registered keys (one per site), two rounds with
`flwr run`. The run's status must really be completed (not just the exit code), the round
checkpoints signed, every site reply only weights and scalar metrics, and every process gone
afterwards. The coordinator's ServerApp is killed (SIGKILL) during round 2; started again, the run
continues at round 2. An unregistered SuperNode is refused."""

from __future__ import annotations

import csv
import time
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import tomllib

from federation_helpers import check_outboxes, small_federation
from flower_deployment import deployment
from ugafl.common.model import ModelConfig
from ugafl.server.federation import FederationSettings

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "flower_app"
CENTRES = ("RUMC", "UMCU", "RST")


def test_the_app_defaults_are_the_federation_settings() -> None:
    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert config["components"] == {"serverapp": "ugafl.server.flower_app:app",
                                    "clientapp": "ugafl.client.flower_app:app"}
    defaults = {f.name.replace("_", "-"): "" if f.default is MISSING else f.default for f in fields(FederationSettings)}
    assert config["config"] == defaults  # the three required paths default to "" (refused by the ServerApp)


@pytest.mark.slow
def test_two_rounds_on_the_deployment_engine_with_tls_and_node_auth(tmp_path: Path) -> None:
    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.common.pki import create_ca, create_node_keys, create_server_cert
    from ugafl.common.signing import load_public_key, read_signature, verify_model
    from ugafl.common.wire import unique_state
    from ugafl.server.federation import round_path
    from ugafl.simulations.federated import prepare_sites

    data, central = small_federation(tmp_path / "fed", CENTRES, ModelConfig(channels=(8, 16, 32)))
    run_dir = tmp_path / "run"
    sites, centres, _ = prepare_sites(run_dir, data, "RUMC", list(CENTRES))
    pki = tmp_path / "pki"
    create_ca(pki / "ca.pem", pki / "ca.key")
    create_server_cert(pki / "server.pem", pki / "server.key", pki / "ca.pem", pki / "ca.key", ["localhost", "127.0.0.1"])
    for i in range(len(CENTRES) + 1):
        create_node_keys(pki / f"node{i}.key", pki / f"node{i}.pub")
    out = tmp_path / "coordinator"

    with deployment(tmp_path / "flower", pki) as dep:
        for i in range(len(CENTRES)):
            dep.register(pki / f"node{i}.pub")
            dep.add_supernode(f"supernode{i}", pki / f"node{i}.key", f"site-config='{sites / str(i) / 'site.toml'}'")
        dep.add_supernode("intruder", pki / f"node{len(CENTRES)}.key", "site-config='/nonexistent'")  # never registered
        run_config = (f"central-checkpoint='{central}' out-dir='{out}' "
                      f"signing-key='{run_dir / 'coordinator' / 'signing.key'}' num-rounds=2 budget=2 passes=2 "
                      f"local-steps=8 min-nodes={len(CENTRES)} eval-data='{data}' weighting='sites'")
        # The coordinator's ServerApp is killed during round 2, then the run is started again.
        first_id, _ = dep.run(APP, run_config, stream=False)
        signature = round_path(out, 1).with_name("round-0001.pt.sig")
        deadline = time.monotonic() + 600
        while not signature.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert signature.exists(), dep.run_status(first_id)
        time.sleep(3)  # into round 2
        dep.kill_serverapp()
        run_id, output = dep.run(APP, run_config)
        status = dep.run_status(run_id)
        assert status["status"] == "finished:completed", (status, output)
        assert dep.run_status(first_id)["status"] != "finished:completed"
        intruder_log = (tmp_path / "flower" / "intruder.log").read_text(errors="replace")

    assert "aggregate_train: Received 3 results and 0 failures" in output
    assert "resuming after round 1" in output and "round 1/2" not in output  # round 2 only
    assert "Failed to activate SuperNode" in intruder_log and "SuperNode ID" not in intruder_log, intruder_log[-2000:]
    public = load_public_key(run_dir / "coordinator" / "signing.pub")
    for r in (0, 1, 2):
        state = unique_state(load_checkpoint(round_path(out, r)).model)
        assert verify_model(state, read_signature(round_path(out, r)), [public], f"round {r}")["round"] == r
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"] and all(r["updates-aggregated"] == "3" for r in rows)
    workspaces = [sites / str(i) / "ws" for i in range(len(CENTRES))]
    entries = check_outboxes(workspaces, central, data, [data, run_dir, tmp_path])
    assert {(str(e["workspace"]), e["type"], e["round"]) for e in entries} >= {
        (str(ws), t, r) for ws in workspaces for t in ("query", "train", "evaluate") for r in (1, 2)}
    print(f"deployment engine, 2 rounds x 3 sites: {status['elapsed']:.1f} s; traffic {status['network-traffic']}; "
          f"rounds {[r['seconds-round'] for r in rows]} s, of which training {[r['seconds-train'] for r in rows]} s")
