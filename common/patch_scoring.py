"""How a patch's per-pixel uncertainty becomes the one number selection ranks it by, by name: the
one place the names live. A scoring takes a map (B, H, W) and the patches' tissue (B, H, W, bool)
and returns (B,) float64; a patch it cannot score is NaN (never selected)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ugafl.common.errors import ConfigError


def tissue_mean(values: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Mean over each patch's tissue pixels; NaN for a patch without tissue."""
    count = tissue.sum(axis=(1, 2))
    total = np.where(tissue, values, 0.0).sum(axis=(1, 2))
    return np.where(count == 0, np.nan, total / np.maximum(count, 1))


PatchScoring = Callable[[np.ndarray, np.ndarray], np.ndarray]
PATCH_SCORINGS: dict[str, PatchScoring] = {
    "mean": tissue_mean,
}
PATCH_SCORING_NAMES: tuple[str, ...] = tuple(PATCH_SCORINGS)


def patch_scoring(name: str) -> PatchScoring:
    """The scoring called `name`; ConfigError listing the known ones if there is none."""
    if name not in PATCH_SCORINGS:
        raise ConfigError(f"unknown patch scoring {name!r}; one of {', '.join(PATCH_SCORING_NAMES)}")
    return PATCH_SCORINGS[name]
