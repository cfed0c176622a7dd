"""A sensitivity check of the local training schedule: one FedAvg round from an experiment's
central model, on the patches each external site corrected in round 1 of an arm already run, with
the sites' local steps and learning rate set here instead of by the config. Every site's update has
one vote, as with `weighting = "sites"`; the central site fine-tunes on its own bank as in a round.
With the config's own schedule it reproduces the arm's "+budget" checkpoint.

    python -m ugafl.simulations.first_round_check runs/paper --steps 100 --lr 2e-4 --seed 0

The arms' folders are only read. Prints the Dice per test centre and the external centres' mean."""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ugafl.client.queue.corrected import corrected_patches
from ugafl.client.round.local_training import local_schedule
from ugafl.client.site_config import SiteConfig
from ugafl.common.central_bank import round_bank
from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.log import configure, get_logger
from ugafl.common.training import train_segmentation
from ugafl.server.evaluation import evaluate_model
from ugafl.simulations.experiment import arm_name

log = get_logger("first_round_check")


def first_round(run_dir: Path, strategy: str, steps: int, lr: float, seed: int = 0, method: str = "tta",
                central_centre: str = "RUMC") -> dict[str, float]:
    """Dice per test centre after one round with local `steps` at `lr` (the site seed is seed + 1, as in round 1)."""
    ckpt = load_checkpoint(run_dir / "central.pt")
    cfg = ckpt.model_config

    def tune(images: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(ckpt.model)
        train_segmentation(model, images, labels, local_schedule(images, steps, lr, seed + 1), "cpu", progress=False,
                           num_classes=cfg.num_classes)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    bank = round_bank(run_dir / "data", cfg, central_centre, seed + 1)
    states = [tune(bank.images, bank.labels)]
    for site in sorted((run_dir / "arms" / arm_name(method, strategy, seed) / "sites").glob("*/site.toml")):
        if SiteConfig.load(site).role != "central":  # the central site's update is the bank's, above
            states.append(tune(*corrected_patches(site.parent / "ws", round_=1)[:2]))
    mean = {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}
    model = copy.deepcopy(ckpt.model)
    model.load_state_dict(mean)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "round-1.pt"
        save_checkpoint(path, model, cfg)
        dice = evaluate_model(path, run_dir / "data", "test", progress=False).centre_dice()
    dice["external"] = float(np.mean([v for c, v in dice.items() if c != central_centre]))
    return dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selections", default="random,top-k,stochastic-batch")
    args = parser.parse_args()
    configure()
    for strategy in args.selections.split(","):
        dice = first_round(args.run_dir, strategy, args.steps, args.lr, args.seed)
        log.info("local steps %d, lr %g, %s, seed %d: external %.3f %s", args.steps, args.lr, strategy, args.seed,
                 dice["external"], json.dumps({k: round(v, 4) for k, v in dice.items()}))


if __name__ == "__main__":
    main()
