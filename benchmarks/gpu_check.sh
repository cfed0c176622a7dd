#!/usr/bin/env bash
# The GPU path, measured in one go on a machine with an NVIDIA GPU (issue 18). Steps, each with its
# own time limit; a failed step is reported and the next one runs:
#
#   facts       nvidia-smi, torch's view of CUDA (version, GPU, capability, memory, bf16, cuDNN), and
#               which of ugafl's imports are missing. DEVICE=cuda without CUDA stops here (exit 2).
#   throughput  benchmarks/gpu_throughput.py: ugafl's uncertainty pass, site fine-tune and central
#               training step against a plain torch loop on the same model, batches and precision;
#               patches/s and their ratio (target >= 0.9).
#   demo        benchmarks/gpu_demo_round.py: the demo's synthetic centres and central model
#               (benchmarks/gpu_demo.toml: the demo's model and round, a smaller dataset) and one
#               federated round, every site on the device; seconds per stage and per site.
#   finetune    benchmarks/gpu_finetune.py: one site's query and anchored local fine-tune on the
#               demo's data and central model; seconds, steps, crops/s.
#   wsi         benchmarks/wsi.py at the 1/16 size only (a real-size synthetic slide, 25,000 x 50,000 px,
#               written first unless WSI_SLIDES already holds it): every uncertainty method and the
#               peers, on the device.
#
#   benchmarks/gpu_check.sh                       # on the GPU machine (DEVICE=cuda)
#   DEVICE=cpu TINY=1 benchmarks/gpu_check.sh     # the CPU check (tests/test_gpu_check.py), smallest settings
#   STEPS="throughput wsi" benchmarks/gpu_check.sh  # some steps only (facts always runs)
#
# Writes under ${OUT:-runs/gpu-check} (at most 8 files, so that a device run brings them all back):
# gpu_check.log (everything printed), facts.json, throughput.json, demo.json, finetune.json,
# wsi.json and summary.json (each step's status and seconds, and the headline figures). Slides,
# datasets and per-step logs go to ${WORK:-runs/gpu-check-work}. Prints a closing summary: each
# step ok / FAILED (exit status) / TIMED OUT / skipped, then the throughput table.
#
# Settings (environment): DEVICE (cuda), TINY (0), STEPS, OUT, WORK, WSI_SLIDES (where the 1/16
# slide is kept; default WORK/wsi), DEMO_CONFIG, PYTHON, WHEELS, and the limits T_FACTS (120),
# T_THROUGHPUT (360), T_DEMO (540), T_FINETUNE (300), T_WSI (540) in seconds.
#
# On the GPU machine of this workplace (one H200, 16 cores, no network, 10 minutes a command, 15
# in all): fetch the wheels here first (benchmarks/gpu_wheels.sh, about 38 MB into .whl), then run
# two commands back to back on the warm machine, carrying .whl, each well under 10 minutes (the
# minutes are estimates; nothing has been measured on a GPU yet):
#   STEPS="throughput wsi" T_THROUGHPUT=240 T_WSI=300 bash benchmarks/gpu_check.sh      (~4 min)
#   STEPS="demo finetune" T_DEMO=360 T_FINETUNE=180 bash benchmarks/gpu_check.sh        (~4 min)
# OUT is emptied before each device command: keep each command's figures before the next.
#
# Python: PYTHON, else the repo's .venv/bin/python, else python3. Nothing is downloaded. Where
# `ugafl` is not installed (a bare GPU machine), the repo itself is put on PYTHONPATH (a namespace
# shim, with the package's entry points, in WORK/pyshim); where ugafl's dependencies are missing
# and WHEELS (default .whl) holds wheels (benchmarks/gpu_wheels.sh fetches them beforehand on a
# machine with the package index), those are installed into WORK/site with pip --no-index first.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
OUT=${OUT:-runs/gpu-check}
WORK=${WORK:-runs/gpu-check-work}
STEPS=${STEPS:-throughput demo finetune wsi}
STEPS=${STEPS//,/ }
WSI_SLIDES=${WSI_SLIDES:-$WORK/wsi}
WHEELS=${WHEELS:-$ROOT/.whl}
if [ "$TINY" = 1 ]; then DEMO_CONFIG=${DEMO_CONFIG:-benchmarks/gpu_demo_tiny.toml}; else DEMO_CONFIG=${DEMO_CONFIG:-benchmarks/gpu_demo.toml}; fi
T_FACTS=${T_FACTS:-120} T_THROUGHPUT=${T_THROUGHPUT:-360} T_DEMO=${T_DEMO:-540} T_FINETUNE=${T_FINETUNE:-300} T_WSI=${T_WSI:-540}
mkdir -p "$OUT" "$WORK/logs" "$WSI_SLIDES"
OUT=$(cd "$OUT" && pwd) WORK=$(cd "$WORK" && pwd) WSI_SLIDES=$(cd "$WSI_SLIDES" && pwd)
rm -f "$OUT"/{gpu_check.log,facts.json,throughput.json,demo.json,finetune.json,wsi.json,summary.json}
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
finish() {  # EXIT_STATUS: lets tee write the log's last lines before the script ends
  exec >&- 2>&-
  wait "$TEE_PID" 2> /dev/null
  exit "$1"
}

export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg MPLCONFIGDIR="$WORK/mpl" FLWR_TELEMETRY_ENABLED=0 \
  FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0 FLWR_HOME="$WORK/flwr-home"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi

echo "== gpu_check: DEVICE=$DEVICE TINY=$TINY STEPS='$STEPS' python=$PY"
echo "   figures in $OUT, work in $WORK, started $(date -u +%FT%TZ) on ${HOSTNAME:-?}"

# ---- the environment: wheels carried in, the repo importable as ugafl (no download)
NEEDED="import monai, openslide, tifffile, imagecodecs, pydantic, cryptography"
if ! "$PY" -c "$NEEDED" 2> /dev/null && compgen -G "$WHEELS/*.whl" > /dev/null; then
  echo "-- $PY lacks some of ugafl's dependencies: installing the wheels in $WHEELS into $WORK/site (no index)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl \
    && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import ugafl.common.model" 2> /dev/null; then
  echo "-- ugafl is not installed for $PY: the repo goes on PYTHONPATH through $WORK/pyshim"
  rm -rf "$WORK/pyshim" && mkdir -p "$WORK/pyshim/ugafl" "$WORK/pyshim/ugafl-0.0.0.dist-info"
  for pkg in common client server simulations cli; do ln -s "$ROOT/$pkg" "$WORK/pyshim/ugafl/$pkg"; done
  printf 'Metadata-Version: 2.1\nName: ugafl\nVersion: 0.0.0\n' > "$WORK/pyshim/ugafl-0.0.0.dist-info/METADATA"
  # the entry points of pyproject.toml (the simulated annotator is found through them)
  "$PY" - "$ROOT/pyproject.toml" > "$WORK/pyshim/ugafl-0.0.0.dist-info/entry_points.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
for group, points in groups.items():
    print(f"[{group}]")
    for name, target in points.items():
        print(f"{name} = {target}")
EOF
  export PYTHONPATH="$WORK/pyshim${PYTHONPATH:+:$PYTHONPATH}"
fi

declare -A STATUS ELAPSED
ORDER=()

run_step() {  # NAME LIMIT_S COMMAND...: runs it with its own limit, logs to WORK/logs/NAME.log and to the screen
  local name=$1 limit=$2 rc t0
  shift 2
  ORDER+=("$name")
  echo
  echo "== $name (limit ${limit} s): ${SAY:-$*}"
  t0=$(date +%s.%N)
  timeout --kill-after=20 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
  rc=${PIPESTATUS[0]}
  ELAPSED[$name]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" = 0 ]; then STATUS[$name]=ok
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then STATUS[$name]="TIMED OUT (${limit} s)"
  else STATUS[$name]="FAILED (exit $rc)"; fi
  echo "-- $name: ${STATUS[$name]} in ${ELAPSED[$name]} s"
}

skip_step() {  # NAME REASON
  ORDER+=("$1")
  STATUS[$1]="skipped: $2"
  ELAPSED[$1]=0
  echo
  echo "== $1: skipped: $2"
}

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# ---- facts
FACTS_PY='
import importlib.util, json, os, platform, sys
facts = {"python": sys.executable, "python_version": platform.python_version(), "cores": os.cpu_count()}
missing = [m for m in ("torch", "numpy", "monai", "openslide", "tifffile", "imagecodecs", "pydantic", "cryptography",
                       "scipy", "skimage", "matplotlib", "click", "tqdm", "PIL", "ugafl.common")
           if importlib.util.find_spec(m) is None]
facts["missing_imports"] = missing
try:
    import torch
    facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                 cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                 threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpus=torch.cuda.device_count(), gpu=p.name, capability=f"{p.major}.{p.minor}",
                     gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                     bf16=torch.cuda.is_bf16_supported(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                     tf32_cudnn=torch.backends.cudnn.allow_tf32)
except Exception as error:
    facts["torch_error"] = f"{type(error).__name__}: {error}"
json.dump(facts, open(sys.argv[1], "w"), indent=1)
for k, v in facts.items():
    print(f"  {k}: {v}")
'
# shellcheck disable=SC2016
FACTS_SH='if command -v nvidia-smi > /dev/null; then
  timeout 60 nvidia-smi || true
  timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
else
  echo "nvidia-smi: not found on this machine"
fi
"$0" -c "$1" "$2"'
SAY="nvidia-smi, torch's CUDA, ugafl's imports" run_step facts "$T_FACTS" bash -c "$FACTS_SH" "$PY" "$FACTS_PY" "$OUT/facts.json"
CUDA_OK=$("$PY" -c 'import json, sys; print(int(bool(json.load(open(sys.argv[1])).get("cuda_available"))))' "$OUT/facts.json" 2> /dev/null || echo 0)
if [[ $DEVICE == cuda* ]] && [ "$CUDA_OK" != 1 ]; then
  echo
  echo "gpu_check: DEVICE=$DEVICE, but CUDA is not available to $PY (see the facts above: torch built without CUDA," \
       "no GPU, or no driver). Nothing was measured. On a GPU machine, set PYTHON to a python whose torch is a" \
       "CUDA build; for the CPU check run: DEVICE=cpu TINY=1 $0"
  finish 2
fi

# ---- the steps
if [ "$TINY" = 1 ]; then
  THROUGHPUT_ARGS=(--seconds 2 --repeats 3 --batch 2 --tile 96 --train-steps 2 --crop 64 --patch-px 128)
  FINETUNE_ARGS=(--budget 2 --passes 2 --steps 4)
  WSI_ARGS=(--methods plain --peers "")
else
  THROUGHPUT_ARGS=()
  FINETUNE_ARGS=()
  WSI_ARGS=()
fi

if wanted throughput; then
  run_step throughput "$T_THROUGHPUT" "$PY" benchmarks/gpu_throughput.py --device "$DEVICE" "${THROUGHPUT_ARGS[@]}" \
    --json "$OUT/throughput.json"
fi
if wanted demo; then
  run_step demo "$T_DEMO" "$PY" benchmarks/gpu_demo_round.py --config "$DEMO_CONFIG" --run "$WORK/demo" --device "$DEVICE" \
    --json "$OUT/demo.json"
fi
if wanted finetune; then
  if [ -f "$WORK/demo/central.pt" ] && [ -f "$WORK/demo/data/manifest.json" ]; then
    run_step finetune "$T_FINETUNE" "$PY" benchmarks/gpu_finetune.py --data "$WORK/demo/data" --model "$WORK/demo/central.pt" \
      --device "$DEVICE" "${FINETUNE_ARGS[@]}" --json "$OUT/finetune.json"
  else
    skip_step finetune "no demo data and central model in $WORK/demo (the demo step makes them)"
  fi
fi
if wanted wsi; then
  run_step wsi "$T_WSI" "$PY" benchmarks/wsi.py --sizes 1/16 --device "$DEVICE" "${WSI_ARGS[@]}" --out "$WSI_SLIDES" \
    --json "$OUT/wsi.json"
fi

# ---- summary
STEP_TABLE=$(for s in "${ORDER[@]}"; do printf '%s\t%s\t%s\n' "$s" "${STATUS[$s]}" "${ELAPSED[$s]}"; done)
export STEP_TABLE
echo
echo "== summary ($DEVICE)"
"$PY" - "$OUT" "$DEVICE" "$TINY" <<'EOF'
import json, sys
from pathlib import Path
out, device, tiny = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
import os
steps = [dict(zip(("step", "status", "seconds"), line.split("\t"))) for line in os.environ["STEP_TABLE"].splitlines() if line]
for s in steps:
    s["seconds"] = float(s["seconds"])
    print(f"  {s['step']:<11} {s['status']:<28} {s['seconds']:7.1f} s")
def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
summary = {"device": device, "tiny": tiny, "steps": steps}
facts = load("facts")
if facts:
    summary["gpu"] = facts.get("gpu")
    summary["torch"] = facts.get("torch")
t = load("throughput")
if t:
    print(f"\n  throughput on {t['device']}{' (' + t['gpu'] + ')' if t.get('gpu') else ''}, model {t['arch']}:")
    print(f"  {'path':<46} {'ugafl p/s':>10} {'plain p/s':>10} {'ratio':>6}  target {t['target']:g}")
    for r in t["rows"]:
        print(f"  {r['path']:<46} {r['ugafl_patches_s']:>10.1f} {r['plain_patches_s']:>10.1f} {r['ratio']:>6.2f}  "
              f"{'met' if r['met'] else 'missed'}")
    summary["throughput"] = [{k: r[k] for k in ("path", "ugafl_patches_s", "plain_patches_s", "ratio", "met")} for r in t["rows"]]
d = load("demo")
if d:
    summary["demo"] = {"stages": d["stages"], "central_trained_on": d.get("central_training", {}).get("device"),
                       "sites_see_cuda": d.get("sites_see_cuda"), "after": d["federated"]["after"]}
    print(f"\n  demo round on {d['device']}: " + ", ".join(f"{k} {v:.1f}" for k, v in d["stages"].items()))
f = load("finetune")
if f:
    summary["finetune"] = {k: f[k] for k in ("query_s", "train_s", "crops_per_s", "weights_device")}
    print(f"  local fine-tune on {f['weights_device']}: query {f['query_s']:.1f} s, fine-tune {f['train_s']:.1f} s, "
          f"{f['crops_per_s']:.1f} crops/s")
w = load("wsi")
if w:
    summary["wsi"] = {}
    for size, res in w["sizes"].items():
        for name, row in res["methods"].items():
            summary["wsi"][f"{size} {name}"] = {"patches": row["patches"], "wall_s": row["wall_s"], "compute_s": row["compute_s"],
                                                "patches_per_s": row["patches"] / row["wall_s"]}
            print(f"  wsi {size} {name:<18} {row['patches']:>5d} patches {row['wall_s']:7.1f} s wall "
                  f"{row['compute_s']:7.1f} s compute {row['patches'] / row['wall_s']:7.1f} patch/s")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
EOF
FAILED=0
for s in "${ORDER[@]}"; do [ "${STATUS[$s]}" = ok ] || FAILED=1; done
if [ "$FAILED" = 1 ]; then
  echo "gpu_check: some steps did not complete: $(for s in "${ORDER[@]}"; do [ "${STATUS[$s]}" = ok ] || printf '%s ' "$s"; done)"
fi
finish "$FAILED"
