"""One round of the demo on a device: the demo's stages (`ugafl demo` / `ugafl simulate`, less the
per-centre figures) with --device: the synthetic centres and the central RUMC model (each reused
when it is already in the run folder), then one federated round from that model
(`simulations.federated.run_federated`: every site queries, corrects and fine-tunes; the
coordinator checks, aggregates, gates and evaluates; Dice per centre before and after).

The round runs on the in-process engine by default: the same round code as Flower's engine, with
each site's handler called in worker processes, and no Ray (which a GPU machine may not have, and
which hides the GPU from sites that ask for no GPU, as ugafl's simulation asks). `--engine flower`
runs Flower's simulation engine instead, with RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 so that the sites
see the GPU. Sites pick their device as a site does ("auto": the GPU when their process sees one);
with --device cpu the GPU is hidden from the whole run (CUDA_VISIBLE_DEVICES=""), sites included.

Writes --json: the device, the stages' seconds, the device the central model was trained on, Dice
before and after, and every site's query, train and evaluate metrics of the round (seconds, steps,
loss...), read from the sites' own outboxes.

    python benchmarks/gpu_demo_round.py [--config benchmarks/gpu_demo.toml] [--run runs/gpu-check/demo]
                                        [--device auto|cpu|cuda] [--engine in-process|flower] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "gpu_demo.toml")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "gpu-check" / "demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", default="in-process", choices=("in-process", "flower"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: this process and every site's
    if args.engine == "flower":
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    import torch

    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.common.config import load_config
    from ugafl.common.model import pick_device
    from ugafl.server.central_training import train_central
    from ugafl.simulations.federated import run_federated
    from ugafl.simulations.synth import SynthConfig, generate_dataset

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_demo_round.py: --device {args.device}, but CUDA is not available to this torch "
                         f"({torch.__version__}); use --device cpu")
    device = pick_device(args.device)
    cfg = load_config(args.config)
    if not cfg.federation:
        raise SystemExit(f"{args.config}: no [federation] section")
    cfg = replace(cfg, federation={**cfg.federation, "num_rounds": 1, "engine": args.engine})
    run = args.run
    report: dict = {"device": device.type, "engine": args.engine, "config": str(args.config), "run": str(run),
                    "torch": torch.__version__}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    # What a site's process sees: the site picks "auto" in its own process (a worker, or Ray's).
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    report["sites_see_cuda"] = probe.stdout.strip() == "True"
    print(f"demo round on {device.type} ({args.engine} engine; a site's process sees CUDA: {report['sites_see_cuda']}), "
          f"config {args.config}, run folder {run}", flush=True)

    started = time.perf_counter()
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = generate_dataset(run / "data", cfg.section(SynthConfig, "data"))
    stages["synth_s"] = time.perf_counter() - t0
    ckpt = run / "central.pt"
    t0 = time.perf_counter()
    if not ckpt.is_file():
        train_central(manifest.root, ckpt, cfg.model, cfg.train, cfg.central, device=device.type)
    stages["central_training_s"] = time.perf_counter() - t0
    report["central_training"] = load_checkpoint(ckpt).meta.get("data_summary", {})
    t0 = time.perf_counter()
    fed = run_federated(cfg, run, ckpt, manifest.root)
    stages["round_with_dice_s"] = time.perf_counter() - t0
    stages["round_s"] = fed["summary"]["seconds"]
    report["stages"] = stages
    report["federated"] = {k: fed["summary"][k] for k in ("before", "after", "rounds", "selection", "budget", "seconds")}
    report["sites"] = site_metrics(run / "sites")
    report["total_s"] = time.perf_counter() - started
    print(fed["table"])
    print(f"\n{'site':<8} {'query s':>8} {'train s':>8} {'steps':>6} {'crops/s':>8} {'eval s':>7}")
    for name, site in report["sites"].items():
        q, t, e = site.get("query", {}), site.get("train", {}), site.get("evaluate", {})
        steps, secs = t.get("steps", 0.0), t.get("seconds", 0.0)
        crops = f"{8 * steps / secs:8.1f}" if steps and secs else f"{'-':>8}"
        print(f"{name:<8} {q.get('seconds-compute', float('nan')):8.1f} {t.get('seconds-compute', float('nan')):8.1f} "
              f"{steps:6.0f} {crops} {e.get('seconds-compute', float('nan')):7.1f}")
    print(f"\ncentral model trained on {report['central_training'].get('device', '?')}; "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + f"; all {report['total_s']:.1f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def site_metrics(sites: Path) -> dict:
    """Each site's metrics of round 1, by message type, from its outbox (what it sent back)."""
    out: dict = {}
    for folder in sorted((p for p in sites.iterdir() if (p / "site.toml").is_file()), key=lambda p: int(p.name)):
        name = folder.name
        toml = (folder / "site.toml").read_text()
        for line in toml.splitlines():
            if line.startswith("name = "):
                name = line.split("=", 1)[1].strip().strip('"')
        entries: dict = {}
        outbox = folder / "ws" / "federation" / "outbox.jsonl"
        if outbox.is_file():
            for line in outbox.read_text().splitlines():
                entry = json.loads(line)
                metrics = entry.get("records", {}).get("metrics", {}).get("values", {})
                entries[entry["type"]] = metrics
        out[name] = entries
    return out


if __name__ == "__main__":
    sys.exit(main())
