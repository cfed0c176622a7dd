import time, json
from pathlib import Path
from ugafl.common.config import load_config
from ugafl.simulations.synth import SynthConfig, generate_dataset
from ugafl.server.central_training import train_central
from ugafl.server.evaluation import evaluate_model
cfg = load_config("configs/demo.toml")
t=time.time()
m = generate_dataset("runs/calib/data0", SynthConfig(slides_per_centre=12, seed=0, test_fraction=2/3), progress=False)
print("synth", time.time()-t, flush=True)
t=time.time()
train_central(m.root, Path("runs/calib/central.pt"), cfg.model, cfg.train, cfg.central)
print("train", time.time()-t, flush=True)
for split in ("train","test"):
    t=time.time()
    ev = evaluate_model(Path("runs/calib/central.pt"), m.root, split, progress=False)
    print(split, ev.centre_dice(), time.time()-t, flush=True)
    Path(f"runs/calib/eval_{split}.json").write_text(json.dumps(ev.slides))
