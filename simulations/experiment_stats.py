"""The experiment's statistics from per-slide counts: pooled Dice per centre and per size class,
false-positive area on tumour-free slides, mean ± sd over seeds, and paired differences between
arms with a bootstrap confidence interval over seeds and centres.

A slide row is {"slide_id", "centre", "label_type", "tp", "fp", "fn"} (pixels at the model's mpp).
Pooled Dice = 2ΣTP / (2ΣTP + ΣFP + ΣFN) over the rows (1.0 when there is neither tumour nor a
false positive)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

SIZE_CLASSES = ("negative", "itc", "micro", "macro")  # the paper's Fig. 4c, by greatest dimension


def pooled_dice(rows: Iterable[Mapping]) -> float:
    """2ΣTP / (2ΣTP + ΣFP + ΣFN) over `rows`; 1.0 when the denominator is 0."""
    tp = fp = fn = 0
    for r in rows:
        tp, fp, fn = tp + int(r["tp"]), fp + int(r["fp"]), fn + int(r["fn"])
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0


def centre_dice(rows: Sequence[Mapping]) -> dict[str, float]:
    """Pooled Dice per centre, in the rows' order of centres."""
    return {c: pooled_dice(r for r in rows if r["centre"] == c) for c in dict.fromkeys(r["centre"] for r in rows)}


def class_dice(rows: Sequence[Mapping], centres: Sequence[str]) -> dict[str, float | None]:
    """Pooled Dice per size class over the slides of `centres` (None for a class with no slide);
    on tumour-free slides every predicted pixel is a false positive, so their Dice is 1.0 with
    none and 0.0 with any."""
    out: dict[str, float | None] = {}
    for size in SIZE_CLASSES:
        chosen = [r for r in rows if r["label_type"] == size and r["centre"] in centres]
        out[size] = pooled_dice(chosen) if chosen else None
    return out


def negative_fp_mm2(rows: Sequence[Mapping], centres: Sequence[str], mpp: float) -> float | None:
    """Mean false-positive area per tumour-free slide of `centres`, mm² (None without such a slide)."""
    chosen = [r for r in rows if r["label_type"] == "negative" and r["centre"] in centres]
    if not chosen:
        return None
    return float(np.mean([int(r["fp"]) for r in chosen])) * (mpp / 1000.0) ** 2


def slides_per_class(rows: Sequence[Mapping]) -> dict[str, dict[str, int]]:
    """centre -> size class -> number of test slides."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["centre"], {s: 0 for s in SIZE_CLASSES})[r["label_type"]] += 1
    return out


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd (0.0 for a single value)."""
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired_difference(a: np.ndarray, b: np.ndarray, reps: int = 10000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean of a - b over (seed, centre) cells, both (seeds, centres) arrays paired cell by cell,
    and its 95% bootstrap interval: seeds and centres each resampled with replacement (a two-way
    bootstrap: the interval covers both the run-to-run and the centre-to-centre spread)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"expected a (seeds, centres) array, got shape {diff.shape}")
    rng = np.random.default_rng(seed)
    n_seeds, n_centres = diff.shape
    si = rng.integers(0, n_seeds, (reps, n_seeds))
    ci = rng.integers(0, n_centres, (reps, n_centres))
    means = np.array([diff[np.ix_(s, c)].mean() for s, c in zip(si, ci)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), (float(lo), float(hi))
