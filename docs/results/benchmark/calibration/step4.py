"""Null with idle sites keeping their vote: global = (RUMC's model + 4 x global) / 5 each round (calibration draw)."""
import json, numpy as np, torch
from pathlib import Path
from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.central_bank import round_bank
from ugafl.client.round.local_training import local_schedule
from ugafl.common.training import train_segmentation
from ugafl.server.evaluation import evaluate_model
data, calib = Path("runs/calib/data0"), Path("runs/calib/w2s1")
ckpt = load_checkpoint(Path("runs/calib/central.pt"))
m = ckpt.model
seed = 0
for rnd in (1, 2):
    g = {k: v.clone() for k, v in m.state_dict().items()}
    bank = round_bank(data, ckpt.model_config, "RUMC", seed + rnd)
    train_segmentation(m, bank.images, bank.labels, local_schedule(bank.images, 100, 1e-3, seed + rnd), "cpu", progress=False)
    local = m.state_dict()
    avg = {k: (local[k].float() + 4 * g[k].float()) / 5 if g[k].is_floating_point() else local[k] for k in g}
    m.load_state_dict(avg)
    save_checkpoint(Path(f"/tmp/keep_{rnd}.pt"), m, ckpt.model_config)
    d = evaluate_model(Path(f"/tmp/keep_{rnd}.pt"), calib, "test", progress=False).centre_dice()
    print(rnd, "keep", json.dumps(d), round(float(np.mean([v for c, v in d.items() if c != "RUMC"])), 4), flush=True)
