"""Segmentation metrics from pixel counts, so that slides can be pooled per centre.

Rule for tumour-free slides: their per-slide Dice is undefined (there is nothing to overlap) and
is reported as None together with the false-positive area in mm²; their false-positive pixels
still count in the pooled Dice of their centre, so a model that paints tumour on negative slides
is penalised there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def dice(self) -> float | None:
        """2TP / (2TP + FP + FN); None when the truth is empty (undefined, see the module rule)."""
        if self.tp + self.fn == 0:
            return None
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    @property
    def pooled_dice(self) -> float:
        """Dice over pooled pixels; 1.0 when both truth and prediction are empty."""
        denom = 2 * self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else 2 * self.tp / denom


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Pixel counts of two bool masks of the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    tp = int(np.count_nonzero(pred & truth))
    return Counts(tp=tp, fp=int(np.count_nonzero(pred)) - tp, fn=int(np.count_nonzero(truth)) - tp)
