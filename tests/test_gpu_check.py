"""The GPU check (benchmarks/gpu_check.sh, issue 18), tested on the CPU at its smallest settings:

- gpu_throughput.py measures ugafl's inference and training paths and the plain torch loop on the
  same model, and prints and writes finite, positive ratios;
- without CUDA, asking for it is refused with a clear message (the benchmark, and the script whose
  default device is cuda), and `auto` falls back to the CPU and says so;
- the whole script with DEVICE=cpu TINY=1 runs every step (facts, throughput, the demo round, a
  local fine-tune, the whole-slide benchmark at 1/16) and each writes its figures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TINY_THROUGHPUT = ["--seconds", "2", "--repeats", "3", "--batch", "2", "--tile", "96", "--train-steps", "2",
                   "--crop", "64", "--patch-px", "128"]
PATHS = ("infer: uncertainty pass", "train: site fine-tune (train_anchored)", "train: central recipe (train_segmentation)")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "WORK", "STEPS", "DEVICE", "TINY", "WSI_SLIDES")}
    return {**env, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), **extra}


def check_rows(rows: list[dict]) -> None:
    assert [r["path"] for r in rows] == list(PATHS)
    for r in rows:
        for key in ("ugafl_patches_s", "plain_patches_s", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["path"], key, r[key])
        assert r["ratio"] == pytest.approx(r["ugafl_patches_s"] / r["plain_patches_s"])
        assert r["met"] == (r["ratio"] >= 0.9)
        assert len(r["ugafl_runs"]) == len(r["plain_runs"]) == 3


@pytest.mark.slow
def test_throughput_on_cpu_measures_ugafl_and_the_plain_loop_on_every_path(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    run = subprocess.run([sys.executable, str(BENCH / "gpu_throughput.py"), "--device", "cpu", *TINY_THROUGHPUT,
                          "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["arch"] == "unet"
    check_rows(report["rows"])
    for row in report["rows"][1:]:  # training: the batch making timed on its own
        assert 0 < row["batch_making_s_per_step"] and 0 < row["batch_making_share"] <= 1
    lines = run.stdout.splitlines()
    assert any("ugafl patch/s" in line and "plain patch/s" in line and "ratio" in line for line in lines)
    for path in PATHS:
        line = next(line for line in lines if line.startswith(path + " "))
        assert line.rstrip().endswith(("met", "missed")), line
    assert "CPU figures" in run.stdout


@no_cuda
def test_without_cuda_a_cuda_request_is_refused_and_auto_falls_back(tmp_path: Path, capsys) -> None:
    run = subprocess.run([sys.executable, str(BENCH / "gpu_throughput.py"), "--device", "cuda"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert run.returncode != 0 and "CUDA is not available" in run.stderr and "--device cpu" in run.stderr

    sys.path.insert(0, str(BENCH))
    try:
        import gpu_throughput
    finally:
        sys.path.remove(str(BENCH))
    assert gpu_throughput.pick("auto").type == "cpu"
    assert "CUDA is not available" in capsys.readouterr().out

    # The script's default device is cuda: it states the facts, says why it stops, and measures nothing.
    run = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=script_env(tmp_path))
    assert run.returncode == 2, run.stdout[-3000:]
    assert "DEVICE=cuda, but CUDA is not available" in run.stdout and "DEVICE=cpu" in run.stdout
    facts = json.loads((tmp_path / "out" / "facts.json").read_text())
    assert facts["cuda_available"] is False and facts["missing_imports"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["facts.json", "gpu_check.log"]
    assert "CUDA is not available" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.fixture
def wsi_slides(request) -> Path:
    """Where the 1/16 real-size slide is kept between runs (written once, about a minute on 2
    cores): pytest's cache, seeded from runs/wsi-bench when the whole-slide benchmark left it there."""
    folder = Path(request.config.cache.mkdir("gpu-check-wsi"))
    for name in ("RUMC_real_1of16.tif", "RUMC_real_1of16.tif.json"):
        kept, made = folder / name, ROOT / "runs" / "wsi-bench" / name
        if not kept.is_file() and made.is_file():
            kept.unlink(missing_ok=True)
            kept.symlink_to(made)
    return folder


@pytest.mark.slow
def test_gpu_check_on_cpu_runs_every_step_and_writes_its_figures(tmp_path: Path, wsi_slides: Path) -> None:
    run = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=840, cwd=ROOT,
                         env=script_env(tmp_path, DEVICE="cpu", TINY="1", WSI_SLIDES=str(wsi_slides)))
    out = tmp_path / "out"
    assert run.returncode == 0, run.stdout[-5000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["demo.json", "facts.json", "finetune.json", "gpu_check.log", "summary.json", "throughput.json",
                     "wsi.json"]  # at most 8: a device run brings them all back

    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["tiny"] is True
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("facts", "ok"), ("throughput", "ok"), ("demo", "ok"), ("finetune", "ok"), ("wsi", "ok")]
    assert all(s["seconds"] > 0 for s in summary["steps"])

    check_rows(json.loads((out / "throughput.json").read_text())["rows"])

    demo = json.loads((out / "demo.json").read_text())
    assert demo["device"] == "cpu" and demo["engine"] == "in-process" and demo["sites_see_cuda"] is False
    assert demo["central_training"]["device"] == "cpu"
    assert set(demo["federated"]["after"]) == {"RUMC", "UMCU"} and demo["federated"]["rounds"] == 1
    assert demo["sites"]["UMCU"]["train"]["steps"] > 0 and demo["sites"]["UMCU"]["query"]["queued"] > 0
    assert all(demo["stages"][k] > 0 for k in ("synth_s", "round_s"))

    finetune = json.loads((out / "finetune.json").read_text())
    assert finetune["trained"] and finetune["weights_device"] == "cpu"
    assert finetune["train"]["steps"] > 0 and finetune["crops_per_s"] > 0 and finetune["query"]["corrected-now"] > 0

    wsi = json.loads((out / "wsi.json").read_text())
    assert wsi["device"] == "cpu"
    plain = wsi["sizes"]["1/16"]["methods"]["plain"]
    assert plain["patches"] > 0 and plain["wall_s"] > 0 and plain["compute_s"] > 0

    log = (out / "gpu_check.log").read_text()
    for step in ("facts", "throughput", "demo", "finetune", "wsi"):
        assert f"-- {step}: ok" in log
    assert "== summary (cpu)" in log and "ratio" in log
