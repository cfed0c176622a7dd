"""How a patch's per-pixel uncertainty becomes the one number selection ranks it by, by name: the
one place the names live. A scoring takes a map (B, H, W), the patches' tissue (B, H, W, bool) and
the model's predicted tumour (B, H, W, bool) and returns (B,) float64; a patch it cannot score, or
that it leaves out, is NaN (never selected).

* ``mean``: the mean over the patch's tissue pixels.
* ``paper`` (the UGA paper's): the uncertainty summed over the patch's tissue plus 100 times the
  number of tissue pixels at or above 0.8 of the patch's highest value (the peak-area term); a
  patch that is less than half tissue is left out unless the model predicts tumour in it.

Every scoring is written to the patch-score tables, one column per measure and scoring
(`score_column`), so a site can change its scoring without computing the uncertainty again."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ugafl.common.errors import ConfigError

PEAK_SHARE = 0.8  # paper: a pixel is in the peak area at or above this share of the patch's maximum
PEAK_WEIGHT = 100.0  # paper: weight of the peak area (pixels) beside the summed uncertainty
TISSUE_FLOOR = 0.5  # paper: a patch under this tissue share is skipped unless tumour is predicted in it


def tissue_mean(values: np.ndarray, tissue: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Mean over each patch's tissue pixels; NaN for a patch without tissue."""
    count = tissue.sum(axis=(1, 2))
    total = np.where(tissue, values, 0.0).sum(axis=(1, 2))
    return np.where(count == 0, np.nan, total / np.maximum(count, 1))


def paper_score(values: np.ndarray, tissue: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Sum over tissue + PEAK_WEIGHT x (tissue pixels >= PEAK_SHARE x the patch's maximum on
    tissue); NaN for a patch without tissue, and for one under TISSUE_FLOOR tissue without
    predicted tumour on its tissue."""
    on = np.where(tissue, values, 0.0)
    peak = np.where(tissue, values, -np.inf).max(axis=(1, 2))
    top = tissue & (values >= PEAK_SHARE * peak[:, None, None]) & (peak[:, None, None] > 0)
    score = on.sum(axis=(1, 2)) + PEAK_WEIGHT * top.sum(axis=(1, 2))
    share = tissue.mean(axis=(1, 2))
    kept = tissue.any(axis=(1, 2)) & ((share >= TISSUE_FLOOR) | (tumour & tissue).any(axis=(1, 2)))
    return np.where(kept, score, np.nan)


PatchScoring = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
PATCH_SCORINGS: dict[str, PatchScoring] = {
    "mean": tissue_mean,
    "paper": paper_score,
}
PATCH_SCORING_NAMES: tuple[str, ...] = tuple(PATCH_SCORINGS)


def patch_scoring(name: str) -> PatchScoring:
    """The scoring called `name`; ConfigError listing the known ones if there is none."""
    if name not in PATCH_SCORINGS:
        raise ConfigError(f"unknown patch scoring {name!r}; one of {', '.join(PATCH_SCORING_NAMES)}")
    return PATCH_SCORINGS[name]


def score_column(measure: str, scoring: str = "mean") -> str:
    """The patch-score table's column of `measure` under `scoring`: the measure's own name for the
    mean (as tables have always had it), `<measure>_<scoring>` for the others."""
    patch_scoring(scoring)
    return measure if scoring == "mean" else f"{measure}_{scoring}"
