"""Per-pixel uncertainty from an ensemble's class probabilities, and per-patch summaries.

Layout: `probs` is a torch tensor (M, B, C, H, W): M members, B patches, C classes, H x W pixels,
each member's softmax (sums to 1 over C). Any device or floating dtype is accepted; everything
is computed in float32 on the input's device and maps come back as float32 (B, H, W).
Entropies are in nats (natural log); probabilities are clamped at EPS inside every log, so exact
zeros give finite values (0 * log(EPS) = 0) and never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ugafl.common.log import get_logger

log = get_logger("uncertainty_measures")

EPS = 1e-8
MEASURES = ("entropy", "mutual_information", "uga")
PIXEL_MEASURES = (*MEASURES, "variance")  # variance: EDUE's predicted raters' variance (its own head)


def default_measure(method_name: str) -> str:
    """The measure shown and ranked by when none is given: EDUE's variance, else the UGA score."""
    return "variance" if method_name == "edue" else "uga"


def _checked(probs: torch.Tensor) -> torch.Tensor:
    """`probs` as float32, after checking it is (M, B, C, H, W)."""
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim != 5:
        raise ValueError(f"probs must be (M, B, C, H, W), got shape {tuple(probs.shape)}")
    return probs.float()


def _log(p: torch.Tensor) -> torch.Tensor:
    """Natural log with probabilities clamped at EPS."""
    return torch.log(p.clamp_min(EPS))


def mean_probability(probs: torch.Tensor) -> torch.Tensor:
    """p̄: the members' mean probability, (B, C, H, W) float32."""
    return _checked(probs).mean(dim=0)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p̄) = -Σ_c p̄_c log p̄_c in nats, (B, H, W)."""
    mean = mean_probability(probs)
    return -(mean * _log(mean)).sum(dim=1)


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    """mean_m H(p_m) in nats (the aleatoric part), (B, H, W)."""
    p = _checked(probs)
    return -(p * _log(p)).sum(dim=2).mean(dim=0)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """H(p̄) - mean_m H(p_m) in nats (the members' disagreement), clamped at >= 0, (B, H, W)."""
    return (predictive_entropy(probs) - expected_entropy(probs)).clamp_min(0.0)


def uga_score(probs: torch.Tensor) -> torch.Tensor:
    """mean_m CE(p̄, p_m) = -mean_m Σ_c p̄_c log p_m,c in nats, (B, H, W).

    Equals H(p̄) + mean_m KL(p̄ ‖ p_m), so it is >= H(p̄); unlike the entropy it is not bounded
    by log C (a member that gives ~0 to a class the mean supports adds up to -log EPS ≈ 18.4)."""
    p = _checked(probs)
    return -(p.mean(dim=0) * _log(p).mean(dim=0)).sum(dim=1)


def compute_measures(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """All of MEASURES at once, sharing the log terms: {name: (B, H, W) float32, nats}."""
    p = _checked(probs)
    log_p = _log(p)  # (M, B, C, H, W)
    mean = p.mean(dim=0)  # (B, C, H, W)
    entropy = -(mean * _log(mean)).sum(dim=1)
    expected = -(p * log_p).sum(dim=2).mean(dim=0)
    uga = -(mean * log_p.mean(dim=0)).sum(dim=1)
    return {
        "entropy": entropy,
        "mutual_information": (entropy - expected).clamp_min(0.0),
        "uga": uga,
    }


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def patch_scores(
    maps: Mapping[str, torch.Tensor | np.ndarray], tissue: torch.Tensor | np.ndarray, scoring: str = "mean",
    tumour: torch.Tensor | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each (B, H, W) map reduced to one score per patch by the patch scoring `scoring`
    (common.patch_scoring; "mean": the mean over the patch's tissue pixels; "all": every scoring,
    keyed by `score_column`): {column: (B,) float64}. `tumour` (B, H, W) is the model's predicted
    tumour (None: none predicted).

    Background pixels (tissue False) are excluded; a patch with no tissue pixel scores NaN."""
    from ugafl.common.patch_scoring import PATCH_SCORING_NAMES, patch_scoring, score_column

    names = PATCH_SCORING_NAMES if scoring == "all" else (scoring,)
    reducers = {name: patch_scoring(name) for name in names}
    mask = _numpy(tissue).astype(bool)
    if mask.ndim != 3:
        raise ValueError(f"tissue must be (B, H, W), got shape {mask.shape}")
    predicted = np.zeros_like(mask) if tumour is None else _numpy(tumour).astype(bool)
    if predicted.shape != mask.shape:
        raise ValueError(f"tumour {predicted.shape} and tissue {mask.shape} differ in shape")
    empty = mask.sum(axis=(1, 2)) == 0
    if empty.any():
        log.debug("%d of %d patches have no tissue pixel: scored NaN", int(empty.sum()), len(empty))
    scores = {}
    for name, value in maps.items():
        array = _numpy(value).astype(np.float64)
        if array.shape != mask.shape:
            raise ValueError(f"map {name!r} {array.shape} and tissue {mask.shape} differ in shape")
        for scoring_name, reduce in reducers.items():
            key = name if scoring != "all" else score_column(name, scoring_name)
            scores[key] = reduce(array, mask, predicted)
    return scores
