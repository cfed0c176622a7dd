"""One site's local fine-tune on a device, as a round runs it: the site (a fresh workspace over one
external centre's candidate slides, corrected by the simulated annotator; benchmarks/site_round.py's
`site_for`) receives the central model on --device, scores its slides and queues B patches
(`client.round.query.query`), then fine-tunes with the anchored recipe (`client.round.local_training.train`:
anchor bank, then `common.anchored_training.train_anchored`, bf16 autocast on CUDA).

Prints and writes (--json) the seconds of the query and of the fine-tune, its steps, crops per
second, final loss, and the device the model's weights were on.

    python benchmarks/gpu_finetune.py --data RUN/data --model RUN/central.pt [--centre UMCU]
                                      [--device auto|cpu|cuda] [--budget 5] [--passes 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from site_round import site_for  # noqa: E402

from ugafl.client.round.local_training import LOCAL_BATCH, LocalRecipe, train  # noqa: E402
from ugafl.client.round.query import query  # noqa: E402
from ugafl.common.checkpoint import load_checkpoint  # noqa: E402
from ugafl.common.model import pick_device  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--centre", default="UMCU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=int, default=5, help="patches queued and corrected")
    parser.add_argument("--method", default="tta")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="at most this many fine-tune steps (the demo's local_steps)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_finetune.py: --device {args.device}, but CUDA is not available to this torch "
                         f"({torch.__version__}); use --device cpu")
    device = pick_device(args.device)
    torch.manual_seed(0)
    ckpt = load_checkpoint(args.model, device)
    model, cfg = ckpt.model, ckpt.model_config
    # The demo's [federation]: anchored, 2 epochs over the corrected area, lr 1e-3, mu 0.01, the gate on.
    recipe = LocalRecipe(training="anchored", steps=args.steps, epochs=2.0, lr=1e-3, proximal_mu=0.01,
                         loss="batch-dice-ce", gate=True)
    report: dict = {"device": device.type, "torch": torch.__version__, "centre": args.centre, "method": args.method,
                    "passes": args.passes, "budget": args.budget}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        site = site_for(Path(tmp), args.data, args.centre)
        t0 = time.perf_counter()
        q = query(site, model, cfg, "bench", 1, "stochastic-batch", args.budget, 0, args.method, args.passes)
        if device.type == "cuda":
            torch.cuda.synchronize()
        report["query_s"] = time.perf_counter() - t0
        report["query"] = q
        t0 = time.perf_counter()
        state, ids, metrics = train(site, model, cfg, recipe, seed=1, round_=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        report["train_s"] = time.perf_counter() - t0
    report["train"] = metrics
    report["trained"] = state is not None
    report["corrected_used"] = len(ids)
    report["weights_device"] = next(model.parameters()).device.type
    steps = metrics.get("steps", 0.0)
    report["crops_per_s"] = LOCAL_BATCH * steps / report["train_s"] if steps else 0.0
    print(f"site {args.centre} on {device.type}: query {report['query_s']:.1f} s ({q['slides-scored']:.0f} slides, "
          f"{q['patches-scored']:.0f} patches scored, {q['queued']:.0f} queued, {q['corrected-now']:.0f} corrected); "
          f"fine-tune {report['train_s']:.1f} s, {steps:.0f} steps, {report['crops_per_s']:.1f} crops/s, "
          f"loss {metrics.get('loss', float('nan')):.3f}, weights on {report['weights_device']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if state is None:
        print("gpu_finetune.py: the site had nothing to train on (no corrected patch)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
