"""Per-centre Dice of a model on a dataset's slides: per slide, then pooled per centre (see
common.metrics for the rule on tumour-free slides). Computed at the model's mpp."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ugafl.common.checkpoint import load_checkpoint
from ugafl.common.inference import ProbabilityMap, grid_shape, predict_slide
from ugafl.common.log import get_logger
from ugafl.common.manifest import SlideRecord, load_manifest
from ugafl.common.masks import load_mask
from ugafl.common.metrics import Counts, confusion
from ugafl.common.model import pick_device
from ugafl.common.slide import open_slide

log = get_logger("evaluation")
DICE_RULE = ("Dice per slide = 2TP/(2TP+FP+FN) at the model's mpp; tumour-free slides have no per-slide Dice "
             "(their false-positive area is shown) but their false positives count in the centre's pooled Dice "
             "= 2ΣTP/(2ΣTP+ΣFP+ΣFN) over all its slides.")


@dataclass
class Evaluation:
    model: str
    content_hash: str
    mpp: float
    split: str
    slides: list[dict] = field(default_factory=list)
    centres: list[dict] = field(default_factory=list)
    rule: str = DICE_RULE

    def centre_dice(self) -> dict[str, float]:
        return {c["centre"]: c["pooled_dice"] for c in self.centres}


def evaluate_model(model_path: str | Path, data_dir: str | Path, split: str = "test", centres: list[str] | None = None,
                   device: str = "auto", progress: bool = True,
                   on_prediction: Callable[[SlideRecord, ProbabilityMap], None] | None = None) -> Evaluation:
    """Dice per slide and pooled per centre on `split` slides of the dataset at `data_dir`.
    `on_prediction` sees each slide's probability map (e.g. to draw it) without a second pass."""
    dev = pick_device(device)
    ckpt = load_checkpoint(model_path, dev)
    cfg = ckpt.model_config
    manifest = load_manifest(data_dir)
    records = [r for r in manifest.select(split=split) if centres is None or r.centre in centres]
    result = Evaluation(model=str(model_path), content_hash=ckpt.content_hash, mpp=cfg.mpp, split=split)
    pooled: dict[str, Counts] = {}
    area_mm2 = (cfg.mpp / 1000.0) ** 2
    for rec in tqdm(records, desc="evaluate", unit="slide", disable=not progress):
        with open_slide(manifest.path_of(rec.path)) as slide:
            prob = predict_slide(ckpt.model, cfg, slide, device=dev)
            rows, cols = grid_shape(slide, cfg.mpp)
            truth = load_mask(manifest.path_of(rec.mask)).region((0, 0), slide.dimensions, slide.mpp, cfg.mpp)[:rows, :cols] >= 0.5
        if on_prediction is not None:
            on_prediction(rec, prob)
        counts = confusion(prob.mask()[: truth.shape[0], : truth.shape[1]], truth)
        pooled[rec.centre] = pooled.get(rec.centre, Counts(0, 0, 0)) + counts
        result.slides.append({"slide_id": rec.slide_id, "centre": rec.centre, "label_type": rec.label_type, "dice": counts.dice,
                              "tumour_mm2": round((counts.tp + counts.fn) * area_mm2, 4),
                              "false_positive_mm2": round(counts.fp * area_mm2, 4), "tp": counts.tp, "fp": counts.fp, "fn": counts.fn})
    for centre in dict.fromkeys(r.centre for r in records):
        c = pooled[centre]
        per_slide = [s["dice"] for s in result.slides if s["centre"] == centre and s["dice"] is not None]
        result.centres.append({"centre": centre, "slides": sum(s["centre"] == centre for s in result.slides),
                               "pooled_dice": round(c.pooled_dice, 4),
                               "mean_slide_dice": round(sum(per_slide) / len(per_slide), 4) if per_slide else None,
                               "tp": c.tp, "fp": c.fp, "fn": c.fn})
    return result


def format_table(ev: Evaluation) -> str:
    """Per-slide rows, then per-centre pooled rows, as fixed-width text."""
    lines = [f"model {Path(ev.model).name} ({ev.content_hash[:12]}), split {ev.split}, at {ev.mpp:g} µm/px", "",
             f"{'slide':<12} {'centre':<7} {'type':<9} {'Dice':>6} {'tumour mm²':>11} {'FP mm²':>8}"]
    for s in ev.slides:
        dice = f"{s['dice']:.3f}" if s["dice"] is not None else "n/a"
        lines.append(f"{s['slide_id']:<12} {s['centre']:<7} {s['label_type']:<9} {dice:>6} {s['tumour_mm2']:>11.3f} {s['false_positive_mm2']:>8.3f}")
    lines += ["", f"{'centre':<7} {'slides':>6} {'pooled Dice':>12} {'mean slide Dice':>16}"]
    for c in ev.centres:
        mean = f"{c['mean_slide_dice']:.3f}" if c["mean_slide_dice"] is not None else "n/a"
        lines.append(f"{c['centre']:<7} {c['slides']:>6} {c['pooled_dice']:>12.3f} {mean:>16}")
    lines += ["", ev.rule]
    return "\n".join(lines)
