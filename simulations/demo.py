"""The main job: synthetic centres -> central RUMC model -> per-centre Dice, table and pictures,
all under runs/<name>/. Each stage is skipped when its output already exists (resumable)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ugafl.common.config import RunConfig
from ugafl.common.log import get_logger
from ugafl.common.manifest import Manifest, SlideRecord
from ugafl.server.central_training import train_central
from ugafl.server.evaluation import evaluate_model, format_table
from ugafl.simulations.extra import require_flower_simulation
from ugafl.simulations.figures import centre_gallery, dice_per_centre
from ugafl.simulations.synth import SynthConfig, generate_dataset

log = get_logger("demo")
progress_log = get_logger("progress")


def _gallery_records(manifest: Manifest, split: str) -> list[SlideRecord]:
    """One slide per centre for the picture: its largest-tumour slide in `split`."""
    chosen = []
    for centre in manifest.centres:
        slides = manifest.select(centre=centre, split=split) or manifest.select(centre=centre)
        chosen.append(max(slides, key=lambda s: s.tumour_regions[0].area_um2 if s.tumour_regions else -1.0))
    return chosen


def _trained_line(ckpt: Path, seconds: float) -> str:
    """The central-training progress line, from what the checkpoint records."""
    from ugafl.common.checkpoint import load_checkpoint

    meta = load_checkpoint(ckpt).meta
    data, train = meta.get("data_summary", {}), meta.get("train_config", {})
    return (f"central model: trained on {data.get('centre', '?')}'s {len(data.get('slides', []))} training slides "
            f"({data.get('patches', '?')} patches), {train.get('steps', '?')} steps, final loss "
            f"{data.get('final_loss', float('nan')):.3f}; {seconds:.0f} s")


def run_demo(cfg: RunConfig, run_dir: str | Path, device: str = "auto", federate: bool = True,
             progress: bool = True) -> dict:
    """Runs every stage of the main job; returns the summary also written to summary.json. With a
    [federation] section (and `federate`), the federated simulation follows the central stages.
    Each stage ends with one line on the `ugafl.progress` logger; `progress`: progress bars too."""
    if federate and cfg.federation:
        require_flower_simulation()  # before minutes of data and central training
    synth_cfg = cfg.section(SynthConfig, "data")
    if cfg.federation:  # a wrong key or type, before minutes of data and central training
        from ugafl.simulations.federated import federation_settings

        federation_settings(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if cfg.path is not None:
        (run_dir / "config.toml").write_text(cfg.path.read_text())

    started = time.time()
    manifest = generate_dataset(run_dir / "data", synth_cfg, progress=progress)
    timings["synth_s"] = round(time.time() - started, 1)
    progress_log.info("data: %d synthetic slides of %d centres (%s) in %s; %.0f s", len(manifest.slides),
                      len(manifest.centres), ", ".join(manifest.centres), manifest.root, timings["synth_s"])

    ckpt = run_dir / "central.pt"
    started = time.time()
    if not ckpt.is_file():
        train_central(manifest.root, ckpt, cfg.model, cfg.train, cfg.central, device=device, progress=progress)
        timings["train_s"] = round(time.time() - started, 1)
        progress_log.info("%s", _trained_line(ckpt, timings["train_s"]))
    else:
        timings["train_s"] = round(time.time() - started, 1)
        progress_log.info("central model: %s is already there (delete it to train again)", ckpt)

    started = time.time()
    split = cfg.evaluate.split
    gallery = _gallery_records(manifest, split)
    predictions: dict[str, tuple] = {}

    def keep(rec, prob) -> None:
        if rec.slide_id in {g.slide_id for g in gallery}:
            predictions[rec.slide_id] = (prob.mask(), prob.mpp)

    ev = evaluate_model(ckpt, manifest.root, split=split, device=device, progress=progress, on_prediction=keep)
    timings["evaluate_s"] = round(time.time() - started, 1)
    dice = ev.centre_dice()
    others = [d for c, d in dice.items() if c != cfg.central.centre]
    mean_others = f" (mean of the others {sum(others) / len(others):.3f})" if others else ""
    progress_log.info("central model's Dice on the %s slides: %s%s; %.0f s", split,
                      ", ".join(f"{c} {d:.3f}" for c, d in dice.items()), mean_others, timings["evaluate_s"])
    table = format_table(ev)
    (run_dir / "dice.txt").write_text(table + "\n")
    (run_dir / "dice.json").write_text(json.dumps(asdict(ev), indent=1))

    started = time.time()
    dice_per_centre({"central (RUMC-trained)": dice}, run_dir / "dice_per_centre.png")
    centre_gallery(manifest, run_dir / "slides_per_centre.png", gallery, predictions)
    timings["figures_s"] = round(time.time() - started, 1)
    progress_log.info("figures: dice_per_centre.png, slides_per_centre.png; %.0f s", timings["figures_s"])

    reference = cfg.central.centre
    others = [d for c, d in dice.items() if c != reference]
    summary = {
        "dice": dice,
        "reference_centre": reference,
        "reference_dice": dice.get(reference),
        "mean_other_centres": round(sum(others) / len(others), 4) if others else None,
        "largest_drop": round(dice.get(reference, 0) - min(others), 4) if others else None,
        "timings": timings,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    result = {"summary": summary, "table": table}
    if federate and cfg.federation:
        from ugafl.simulations.federated import run_federated

        started = time.time()
        result["federated"] = run_federated(cfg, run_dir, ckpt, manifest.root)
        summary["timings"]["federated_s"] = round(time.time() - started, 1)
        summary["federated"] = result["federated"]["summary"]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("results in %s", run_dir)
    return result
