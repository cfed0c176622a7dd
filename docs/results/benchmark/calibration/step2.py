"""Calibrate a world on the external centres' TRAINING slides only (never the test slides)."""
import sys, time, json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from ugafl.common.manifest import Manifest
from ugafl.simulations.synth import SynthConfig, plan_slides, generate_slide
from ugafl.server.evaluation import evaluate_model
world, out = sys.argv[1], Path(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
split = "train" if seed == 0 else "test"  # seed 0: the benchmark's candidate slides; other seeds: a separate draw
cfg = SynthConfig(slides_per_centre=12, seed=seed, test_fraction=2/3, world=world)
specs = [s for s in plan_slides(cfg) if s.split == split and s.centre != "RUMC"]
t = time.time()
out.mkdir(parents=True, exist_ok=True)
with ProcessPoolExecutor(2) as pool:
    recs = list(pool.map(generate_slide, [out]*len(specs), [cfg]*len(specs), specs))
Manifest(root=out, slides=recs, info={}).save()
print("synth", round(time.time()-t), flush=True)
import time as _t
while not Path("runs/calib/central.pt").is_file(): _t.sleep(5)
ev = evaluate_model(Path("runs/calib/central.pt"), out, split, progress=False)
for s in ev.slides: print(s["slide_id"], s["label_type"], s["dice"], s["false_positive_mm2"], s["tumour_mm2"])
print(json.dumps(ev.centre_dice()))
