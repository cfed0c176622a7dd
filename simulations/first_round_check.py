"""Round 1 again with another local recipe: one FedAvg round from an experiment's central model,
on the patches each external site corrected in round 1 of an arm already run, each site training
with the recipe given here (client.round.local_training.LocalRecipe) instead of the config's. Every
site has one vote (`weighting = "sites"`); the central site fine-tunes on its own bank as in a
round, or, with --no-central-training, votes for the central model as it is. It is the aggregate
before the acceptance gate. With the config's own recipe it reproduces the arm's first checkpoint
(gate off).

Tune on the training split (`--split train`: the external centres' candidate slides, whose masks
the simulation has; the corrected patches are a small part of them), never on the test slides.

    python -m ugafl.simulations.first_round_check runs/benchmark --training anchored --epochs 2 --lr 3e-4 --split train

The arms' folders are only read. Prints the Dice per centre and the external centres' mean."""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ugafl.client.queue.corrected import corrected_patches
from ugafl.client.round.local_training import LocalRecipe, anchored_training, plain_training
from ugafl.client.site_config import SiteConfig
from ugafl.common.central_bank import round_bank
from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.log import configure, get_logger
from ugafl.server.evaluation import evaluate_model
from ugafl.simulations.experiment import arm_name

log = get_logger("first_round_check")


def first_round(run_dir: Path, strategy: str, recipe: LocalRecipe, seed: int = 0, method: str = "tta",
                central_centre: str = "RUMC", split: str = "test", central_trains: bool = True) -> dict[str, float]:
    """Dice per centre on `split` after one round with the sites training by `recipe` (the site
    seed is seed + 1, as in round 1); on the training split only the external centres."""
    ckpt = load_checkpoint(run_dir / "central.pt")
    cfg = ckpt.model_config
    as_is = {k: v.detach().clone() for k, v in ckpt.model.state_dict().items()}

    def tuned(train) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(ckpt.model)
        train(model)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    states = []
    if central_trains:
        bank = round_bank(run_dir / "data", cfg, central_centre, seed + 1)
        states.append(tuned(lambda m: plain_training(m, cfg, bank.images, bank.labels, recipe, seed + 1)))
    else:
        states.append(as_is)  # an idle vote keeps the global model
    for path in sorted((run_dir / "arms" / arm_name(method, strategy, seed) / "sites").glob("*/site.toml")):
        site = SiteConfig.load(path)
        if site.role == "central":
            continue
        images, labels, ids = corrected_patches(site.workspace, round_=1)
        if recipe.gate and len(ids) >= 2:  # the newest correction is held out of training
            keep = [k for k in range(len(ids)) if k != int(np.argmax(ids))]
            images, labels = images[keep], labels[keep]
        if not len(images):
            states.append(as_is)
        elif recipe.training == "anchored":
            states.append(tuned(lambda m: anchored_training(site.workspace, site.slides, m, cfg, images, labels,
                                                            recipe, seed + 1, round_=1)))
        else:
            states.append(tuned(lambda m: plain_training(m, cfg, images, labels, recipe, seed + 1)))
    mean = {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}
    model = copy.deepcopy(ckpt.model)
    model.load_state_dict(mean)
    centres = None if split == "test" else _external(run_dir, central_centre)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "round-1.pt"
        save_checkpoint(path, model, cfg)
        dice = evaluate_model(path, run_dir / "data", split, centres, progress=False).centre_dice()
    dice["external"] = float(np.mean([v for c, v in dice.items() if c != central_centre]))
    return dice


def _external(run_dir: Path, central_centre: str) -> list[str]:
    from ugafl.common.manifest import load_manifest

    return [c for c in load_manifest(run_dir / "data").centres if c != central_centre]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    for f in fields(LocalRecipe):
        flag = "--" + {"training": "training", "proximal_mu": "mu"}.get(f.name, f.name.replace("_", "-"))
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, dest=f.name, type=type(f.default), default=f.default,
                                help=f"[default: {f.default}]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selections", default="random,top-k,stochastic-batch")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--central-training", dest="central_trains", action=argparse.BooleanOptionalAction,
                        default=True)
    args = parser.parse_args()
    configure()
    recipe = LocalRecipe(**{f.name: getattr(args, f.name) for f in fields(LocalRecipe)})
    for strategy in args.selections.split(","):
        dice = first_round(args.run_dir, strategy, recipe, args.seed, split=args.split,
                           central_trains=args.central_trains)
        log.info("%s, %s, seed %d, %s split: external %.3f %s", recipe, strategy, args.seed, args.split,
                 dice["external"], json.dumps({k: round(v, 4) for k, v in dice.items()}))


if __name__ == "__main__":
    main()
