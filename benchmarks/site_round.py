"""What one site's round costs with each uncertainty method the federation can score with.

On one external centre of a synthetic dataset (its candidate slides) and a central model, the
site's query step (score every slide, queue B patches, the simulated annotator corrects them) and
its train step (the anchored recipe on the corrected patches) are timed with TTA (T passes), MC
dropout (T passes) and an ensemble of M members carried as one global model (the central model's
weights copied M times: the cost does not depend on the weights). Prints seconds per step and the
ratio to TTA; each method starts from a fresh workspace.

    python benchmarks/site_round.py --data runs/benchmark/data --model runs/benchmark/central.pt \
        [--centre UMCU] [--passes 4] [--members 3] [--budget 5]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ugafl.client.round.local_training import LocalRecipe, train
from ugafl.client.round.query import query
from ugafl.client.site_config import SiteConfig
from ugafl.common.checkpoint import load_checkpoint
from ugafl.common.manifest import load_manifest
from ugafl.common.model import MemberStack


def site_for(root: Path, data: Path, centre: str) -> SiteConfig:
    """A site over the centre's candidate (training-split) slides, corrected by the simulated annotator."""
    manifest = load_manifest(data)
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for rec in manifest.select(centre=centre, split="train"):
        src = manifest.path_of(rec.path)
        (inbox / src.name).symlink_to(src.resolve())
    (root / "coordinator.pub").write_text("")
    (root / "site.toml").write_text(f'[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coordinator.pub"]\n'
                                    f'annotator = "simulated"\nannotator_data = "{data.resolve()}"\n')
    return SiteConfig.load(root / "site.toml")


def one_method(data: Path, ckpt, centre: str, method: str, passes: int, members: int, budget: int) -> tuple[float, float]:
    model, cfg = ckpt.model, ckpt.model_config
    if members > 1:
        model = MemberStack([copy.deepcopy(ckpt.model) for _ in range(members)], cfg.num_classes).eval()
        cfg = replace(cfg, members=members)
    recipe = LocalRecipe(training="anchored", steps=100, epochs=2.0, lr=1e-3, proximal_mu=0.01,
                         loss="batch-dice-ce", gate=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = site_for(Path(tmp), data, centre)
        started = time.perf_counter()
        query(site, model, cfg, "bench", 1, "random", budget, 0, method, passes)
        t_query = time.perf_counter() - started
        started = time.perf_counter()
        train(site, model, cfg, recipe, seed=1, round_=1)
        t_train = time.perf_counter() - started
    return t_query, t_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--centre", default="UMCU")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--budget", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    ckpt = load_checkpoint(args.model)
    runs = [("tta", "tta", args.passes, 1), ("mc_dropout", "mc_dropout", args.passes, 1),
            (f"ensemble (M={args.members})", "ensemble", args.passes, args.members)]
    results = {}
    print(f"one site's round on {args.centre}'s candidate slides, {torch.get_num_threads()} torch threads")
    print(f"  {'method':<18} {'query s':>9} {'train s':>9} {'round s':>9} {'x tta':>7}")
    for label, method, passes, members in runs:
        q, t = one_method(args.data, ckpt, args.centre, method, passes, members, args.budget)
        results[label] = q + t
        base = results["tta"]
        print(f"  {label:<18} {q:9.1f} {t:9.1f} {q + t:9.1f} {(q + t) / base:7.2f}")


if __name__ == "__main__":
    main()
