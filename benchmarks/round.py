"""What a federated round costs besides training.

1. Bytes a site sends per round, against the model's size in fp32: each reply (query, train,
   evaluate) serialised exactly as Flower puts it on the wire (its protobuf RecordDict), for the
   CPU default UNet and the nnU-Net-like DynUNet. Target: train reply <= 1.05x the fp32 weights.
2. A round's time by phase, from a run's rounds.csv (`--rounds-csv`, default the demo's, a
   simulation): the coordinator's wall time of each phase, the slowest site's own compute and
   ClientApp start-up in each message phase, and the overhead: the round's wall time minus the
   model compute inside it (the sites' scoring, training and evaluation, the server's own
   evaluation). Target: overhead <= 5 s.
3. `--deployment`: the same on Flower's deployment engine on loopback (SuperLink with TLS and
   node authentication, 3 SuperNodes, 2 rounds, the CPU default UNet; about 5 minutes), plus the
   bytes the sites really sent, as Flower counted them, per site per round against the fp32 weights.

    python benchmarks/round.py [--rounds-csv runs/demo/federated/rounds.csv] [--deployment]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from ugafl.common.model import ModelConfig, build_model
from ugafl.common.wire import unique_state
from ugafl.common.wire_pack import pack_arrays

TARGET_RATIO = 1.05


def wire_bytes(record: RecordDict) -> int:
    return len(recorddict_to_proto(record).SerializeToString())


def message_sizes(cfg: ModelConfig) -> None:
    model = build_model(cfg)
    # as it travels: every tensor once (DynUNet's state dict names every block twice), packed (common.wire_pack)
    state = {k: Array(v) for k, v in pack_arrays({k: t.numpy() for k, t in unique_state(model).items()}).items()}
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    params = sum(p.numel() for p in model.parameters())
    train = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(
        {"num-examples": 15.0, "site-weight": 1.0, "new-corrections": 5.0, "loss": 0.3, "seconds": 40.0})})
    query = RecordDict({"metrics": MetricRecord({k: 1.0 for k in (
        "slides-scored", "slides-failed", "patches-scored", "queued", "corrected-now", "score-mean", "score-max",
        "queue-pending", "queue-in-review", "queue-corrected", "queue-rejected")})})
    evaluate = RecordDict({"metrics": MetricRecord({"num-examples": 15.0, "site-weight": 1.0, "dice": 0.8})})
    t = wire_bytes(train)
    print(f"{cfg.arch}: {params / 1e6:.2f} M parameters, fp32 weights {fp32 / 1e6:.3f} MB")
    print(f"  train reply    {t / 1e6:10.3f} MB   ratio to fp32 weights {t / fp32:.4f}   (target <= {TARGET_RATIO})")
    print(f"  query reply    {wire_bytes(query):10d} B")
    print(f"  evaluate reply {wire_bytes(evaluate):10d} B")
    print(f"  per site per round: {(t + wire_bytes(query) + wire_bytes(evaluate)) / fp32:.4f}x the fp32 weights")


PHASES = ("sign", "query", "train", "aggregate", "checkpoint", "evaluate", "server-eval")
MESSAGES = ("query", "train", "evaluate")
TARGET_OVERHEAD_S = 5.0


def _f(row: dict, key: str) -> float:
    return float(row.get(key) or "nan")


def round_times(path: Path) -> None:
    """Each round's wall time by phase (the coordinator's clock), the slowest site's own compute
    and ClientApp start in each message phase, and the overhead: wall minus the model compute."""
    rows = list(csv.DictReader(path.open()))
    print(f"\nper-round time by phase from {path} ({len(rows)} rounds), seconds:")
    if rows and "seconds-overhead" not in rows[0]:
        print("  (written before rounds.csv had phase timings; rerun the run)")
        return
    print("  " + " ".join(f"{h:>11}" for h in ("round", *PHASES, "wall", "overhead")))
    for r in rows:
        print("  " + " ".join(f"{v:>11}" for v in (r["round"], *(f"{_f(r, 'seconds-' + p):.1f}" for p in PHASES),
                                                 f"{_f(r, 'seconds-round'):.1f}", f"{_f(r, 'seconds-overhead'):.1f}")))
    print("  message phases: coordinator's wall = the slowest site (its ClientApp start + its handler) + the rest "
          "(messaging, polling);\n  start = the ClientApp process's age when the handler begins: Python and Flower "
          "imports and,\n  on the deployment engine, the message still arriving at the SuperNode (--profile splits it)")
    print("  " + " ".join(f"{h:>11}" for h in ("round", "message", "wall", "site", "of it start", "rest")))
    for r in rows:
        for m in MESSAGES:
            wall, site = _f(r, f"seconds-{m}"), _f(r, f"{m}-seconds-site")
            print("  " + " ".join(f"{v:>11}" for v in (r["round"], m, f"{wall:.1f}", f"{site:.1f}",
                                                     f"{_f(r, f'{m}-seconds-startup'):.1f}", f"{wall - site:.1f}")))
    worst = max(_f(r, "seconds-overhead") for r in rows)
    print(f"  overhead per round: worst {worst:.1f} s (target <= {TARGET_OVERHEAD_S:.0f} s): "
          f"{'met' if worst <= TARGET_OVERHEAD_S else 'missed'}")


def deployment_round(workers: bool = True, save_csv: Path | None = None, profile: Path | None = None) -> None:
    """A 2-round run on the deployment engine (the test suite's loopback set-up); with `workers`,
    each site's round worker runs beside its SuperNode, as the site daemon runs them. With
    `profile`, Flower logs at DEBUG, its logs are kept in that folder and round_profile reads them."""
    import os
    import shutil
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from federation_helpers import small_federation
    from flower_deployment import deployment

    from ugafl.common.pki import create_ca, create_node_keys, create_server_cert
    from ugafl.simulations.federated import prepare_sites

    centres, rounds, cfg = ("RUMC", "UMCU", "RST"), 2, ModelConfig()
    fp32 = sum(p.numel() * 4 for p in build_model(cfg).parameters())
    if profile is not None:
        os.environ["FLWR_LOG_LEVEL"] = "DEBUG"  # the SuperNodes' and SuperLink's: their message timings
    with tempfile.TemporaryDirectory(prefix="ugafl-round-") as tmp:
        root = Path(tmp)
        data, central = small_federation(root / "fed", centres, cfg)
        sites, _, _ = prepare_sites(root / "run", data, "RUMC", list(centres))
        pki = root / "pki"
        create_ca(pki / "ca.pem", pki / "ca.key")
        create_server_cert(pki / "server.pem", pki / "server.key", pki / "ca.pem", pki / "ca.key", ["127.0.0.1"])
        with deployment(root / "flower", pki) as dep:
            for i in range(len(centres)):
                create_node_keys(pki / f"node{i}.key", pki / f"node{i}.pub")
                dep.register(pki / f"node{i}.pub")
                if workers:
                    dep.add_worker(f"worker{i}", sites / str(i) / "site.toml")
                dep.add_supernode(f"supernode{i}", pki / f"node{i}.key", f"site-config='{sites / str(i) / 'site.toml'}'")
            run_id, _ = dep.run(Path(__file__).resolve().parents[1] / "deploy" / "flower_app",
                                f"central-checkpoint='{central}' out-dir='{root / 'out'}' "
                                f"signing-key='{root / 'run' / 'coordinator' / 'signing.key'}' num-rounds={rounds} "
                                f"budget=2 passes=2 local-steps=8 min-nodes={len(centres)} weighting='sites'")
            status = dep.run_status(run_id)
        traffic = status["network-traffic"]
        per_site_round = traffic["inbound-bytes"] / (len(centres) * rounds)
        print(f"\ndeployment engine on loopback (TLS + node auth), {len(centres)} sites x {rounds} rounds, "
              f"{'with' if workers else 'without'} the sites' round workers, "
              f"run {status['status']} in {status['elapsed']:.1f} s")
        print(f"  sent by the sites: {traffic['inbound-bytes']:,} B in all, {per_site_round:,.0f} B per site per round, "
              f"{per_site_round / fp32:.4f}x the fp32 weights ({fp32:,} B)   (target <= {TARGET_RATIO})")
        round_times(root / "out" / "rounds.csv")
        if save_csv is not None:
            save_csv.parent.mkdir(parents=True, exist_ok=True)
            save_csv.write_bytes((root / "out" / "rounds.csv").read_bytes())
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            for log in sorted((root / "flower").glob("*.log")):
                shutil.copy(log, profile / log.name)
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from round_profile import main as print_profile

            print(f"\nwhere the time goes, from the SuperNodes' DEBUG logs (kept in {profile}):")
            print_profile([str(profile)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds-csv", type=Path, default=Path("runs/demo/federated/rounds.csv"))
    parser.add_argument("--deployment", action="store_true", help="also run 2 rounds on the deployment engine")
    parser.add_argument("--save-csv", type=Path, help="keep the deployment run's rounds.csv here")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="Flower at DEBUG; keep its logs in DIR and print where each message's time goes")
    parser.add_argument("--no-worker", action="store_true",
                        help="on the deployment engine, every ClientApp process answers its message itself")
    args = parser.parse_args()
    message_sizes(ModelConfig())
    message_sizes(ModelConfig(arch="dynunet"))
    if args.rounds_csv.is_file():
        round_times(args.rounds_csv)
    else:
        print(f"\n{args.rounds_csv}: not found; run `make demo` first for the per-round times")
    if args.deployment:
        deployment_round(workers=not args.no_worker, save_csv=args.save_csv, profile=args.profile)


if __name__ == "__main__":
    main()
