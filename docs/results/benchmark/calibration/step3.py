"""Null drift on TRAINING slides: the central site's own round training, alone (what the null arm
aggregates), and averaged with 4 idle sites' unchanged model (an idle site keeping its vote)."""
import sys, json, numpy as np, torch
from pathlib import Path
from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.central_bank import round_bank
from ugafl.client.round.local_training import local_schedule
from ugafl.common.training import train_segmentation
from ugafl.server.evaluation import evaluate_model
data, calib = Path("runs/calib/data0"), Path(sys.argv[1])
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-3
base = evaluate_model(Path("runs/calib/central.pt"), calib, "test", progress=False).centre_dice()
print("central", json.dumps(base), flush=True)
for seed in (0,):
    ckpt = load_checkpoint(Path("runs/calib/central.pt"))
    g = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    m = ckpt.model
    for rnd in (1, 2):
        bank = round_bank(data, ckpt.model_config, "RUMC", seed + rnd)
        train_segmentation(m, bank.images, bank.labels, local_schedule(bank.images, 100, lr, seed + rnd), "cpu", progress=False)
        save_checkpoint(Path(f"/tmp/null_{seed}_{rnd}.pt"), m, ckpt.model_config)
        d = evaluate_model(Path(f"/tmp/null_{seed}_{rnd}.pt"), calib, "test", progress=False).centre_dice()
        ext = np.mean([v for c, v in d.items() if c != "RUMC"])
        print(seed, rnd, "alone", json.dumps(d), round(float(ext), 4), flush=True)
