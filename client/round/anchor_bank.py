"""The anchors of a site's local training: crops of the site's own unlabelled tissue with the
incoming global model's TTA mean as their soft target, made once per round before training.
Crops come from the patch-score tables of this round's query (boxes at least half tissue) and
never overlap a queued box, whose pixels have (or will have) a pathologist's correction."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ugafl.client.queue.fill import find_slide
from ugafl.client.queue.store import CorrectionQueue
from ugafl.common.errors import DataError
from ugafl.common.log import get_logger
from ugafl.common.model import ModelConfig, to_input
from ugafl.common.selection import Candidates, overlaps_any
from ugafl.common.slide import open_slide
from ugafl.common.uncertainty_methods import method_from_models

log = get_logger("anchor_bank")

MIN_TISSUE = 0.5  # a box must be at least this share tissue to give anchors
TEACHER_PASSES = 4  # the global model's TTA: the four quarter turns


@dataclass
class AnchorBank:
    """K crops at the model's mpp: images uint8 (K, C, C, 3), soft targets float32 (K, C, C)."""

    images: np.ndarray
    probs: np.ndarray

    @staticmethod
    def empty(crop: int) -> AnchorBank:
        return AnchorBank(np.zeros((0, crop, crop, 3), np.uint8), np.zeros((0, crop, crop), np.float32))


def _tissue_boxes(workspace: Path) -> list[tuple[str, int, int, int, int]]:
    """(slide stem, x, y, w, h) of every scored box at least MIN_TISSUE tissue, once each."""
    boxes: dict[tuple, None] = {}
    for table in sorted((workspace / "patch_scores").glob("*.csv")):
        stem = table.name.rsplit(".", 2)[0]
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    if float(row.get("tissue_fraction") or 0) >= MIN_TISSUE:
                        boxes[(stem, *(int(round(float(row[k]))) for k in ("x", "y", "width", "height")))] = None
                except (KeyError, ValueError):
                    raise DataError(f"{table}: a row without a numeric box or tissue_fraction") from None
    return list(boxes)


def _free(boxes: list[tuple], taken: list[tuple]) -> list[tuple]:
    """The boxes that overlap no taken box of the same slide."""
    if not boxes or not taken:
        return boxes
    names = {s: i for i, s in enumerate(dict.fromkeys([b[0] for b in boxes] + [t[0] for t in taken]))}

    def cand(rows):
        a = np.array([r[1:] for r in rows], np.int64)
        return Candidates(np.array([names[r[0]] for r in rows]), a[:, 0], a[:, 1], a[:, 2], a[:, 3], np.zeros(len(rows)))

    hit = overlaps_any(cand(boxes), cand(taken))
    return [b for b, h in zip(boxes, hit) if not h]


@torch.no_grad()
def anchor_bank(workspace: Path, slides_dir: Path, model: torch.nn.Module, cfg: ModelConfig, count: int, crop: int,
                seed: int, until_round: int | None = None) -> AnchorBank:
    """`count` crops of `crop` px at the model's mpp from the site's unlabelled tissue, with the
    global `model`'s TTA mean tumour probability; `until_round`: leave out the boxes queued up to
    that round (None: all queued boxes; a replay of round r passes r and gets that round's anchors).
    Empty when the site has no scored tissue."""
    taken: list[tuple] = []
    if (workspace / "queue.db").is_file():
        with CorrectionQueue(workspace) as queue:
            taken = [(i.slide, i.x, i.y, i.width, i.height) for i in queue.list()
                     if until_round is None or i.round <= until_round]
    boxes = _free(_tissue_boxes(workspace), taken)
    if count <= 0 or not boxes:
        log.info("no unlabelled tissue scored yet: local training without anchors")
        return AnchorBank.empty(crop)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.integers(len(boxes), size=count))
    images = np.empty((count, crop, crop, 3), np.uint8)
    by_slide: dict[str, list[int]] = {}
    for k, b in enumerate(picks):
        by_slide.setdefault(boxes[b][0], []).append(k)
    for stem, ks in by_slide.items():
        with open_slide(find_slide(slides_dir, stem)) as slide:
            side0 = max(1, round(crop * cfg.mpp / slide.mpp))
            for k in ks:
                _, x, y, w, h = boxes[picks[k]]
                x0 = x + int(rng.integers(0, max(1, w - side0 + 1)))
                y0 = y + int(rng.integers(0, max(1, h - side0 + 1)))
                rgb = slide.read_region((x0, y0), (side0, side0), cfg.mpp)[:crop, :crop]
                images[k] = np.pad(rgb, ((0, crop - rgb.shape[0]), (0, crop - rgb.shape[1]), (0, 0)), mode="edge")
    device = next(model.parameters()).device
    teacher = method_from_models("tta", [model], cfg, device, TEACHER_PASSES)
    probs = np.concatenate([teacher(to_input(images[i:i + 16], device)).probs.mean(dim=0)[:, 1].cpu().numpy()
                            for i in range(0, count, 16)])
    model.eval()
    log.info("%d anchor crops from %d slides; mean teacher tumour probability %.3f", count, len(by_slide),
             float(probs.mean()))
    return AnchorBank(images, probs.astype(np.float32))
