"""How well uncertainty finds segmentation errors (AUROC), calibration (ECE, NLL), correlations.

All inputs are numpy arrays of any shape, flattened; the streaming accumulators keep O(bins)
memory whatever the number of pixels, so whole slides can be added chunk by chunk and pooled
with `merge`. NLL is in nats (natural log).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from ugafl.common.log import get_logger

log = get_logger("uncertainty_quality")

NLL_CLAMP = 1e-7


def _flat_pair(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 scores and bool labels of the same size, NaN scores dropped."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    keep = ~np.isnan(s)
    if not keep.all():
        log.debug("dropping %d NaN scores", int((~keep).sum()))
        s, y = s[keep], y[keep]
    return s, y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC of `scores` ranking positives (labels True) above negatives.

    Mann-Whitney U from average ranks (ties count half); NaN scores are dropped; NaN when the
    labels are all one class."""
    s, y = _flat_pair(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


class BinnedAuroc:
    """Streaming ROC AUC over a fixed score range cut into `bins` equal bins; O(bins) memory.

    Scores outside [low, high] are clipped into the end bins; pairs in the same bin count half
    (trapezoid rule), so the error against `auroc` shrinks with the bin width. NaN scores are
    dropped."""

    def __init__(self, low: float = 0.0, high: float = 1.0, bins: int = 4096) -> None:
        if not high > low:
            raise ValueError(f"need high > low, got low={low}, high={high}")
        if bins < 1:
            raise ValueError(f"need at least one bin, got {bins}")
        self.low, self.high, self.bins = float(low), float(high), int(bins)
        self.positives = np.zeros(self.bins, np.int64)
        self.negatives = np.zeros(self.bins, np.int64)

    @property
    def n(self) -> int:
        """Number of scores added (NaN excluded)."""
        return int(self.positives.sum() + self.negatives.sum())

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Count scores (any shape) with their bool labels (same size)."""
        s, y = _flat_pair(scores, labels)
        index = np.floor((s - self.low) * (self.bins / (self.high - self.low)))
        index = np.clip(index, 0, self.bins - 1).astype(np.int64)
        self.positives += np.bincount(index[y], minlength=self.bins)
        self.negatives += np.bincount(index[~y], minlength=self.bins)

    def merge(self, other: "BinnedAuroc") -> None:
        """Add another accumulator's counts (same range and bins)."""
        if (other.low, other.high, other.bins) != (self.low, self.high, self.bins):
            raise ValueError("cannot merge BinnedAuroc with different range or bins")
        self.positives += other.positives
        self.negatives += other.negatives

    def value(self) -> float:
        """ROC AUC so far; NaN when only one class has been seen."""
        pos = self.positives.astype(np.float64)
        neg = self.negatives.astype(np.float64)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negatives in strictly lower bins
        return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 pairs with any pair holding a NaN dropped."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in size: {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _correlation(function, a: np.ndarray, b: np.ndarray) -> float:
    x, y = _paired(a, b)
    if x.size < 3:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant input -> NaN
        return float(function(x, y).statistic)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation, ignoring pairs where either is NaN; NaN if < 3 pairs remain
    or either side is constant."""
    return _correlation(stats.spearmanr, a, b)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, ignoring pairs where either is NaN; NaN if < 3 pairs remain or
    either side is constant."""
    return _correlation(stats.pearsonr, a, b)


class CalibrationAccumulator:
    """Streaming calibration of binary probabilities p(tumour); O(bins) memory.

    ECE is the binary reliability form over `bins` equal-width bins of p(tumour) on [0, 1]
    (not of the max-class confidence): ECE = Σ_b (n_b / N) |mean(truth in b) - mean(p in b)|.
    NLL is the mean of -[t log p + (1 - t) log(1 - p)] in nats, p clamped to [1e-7, 1 - 1e-7]."""

    def __init__(self, bins: int = 15) -> None:
        if bins < 1:
            raise ValueError(f"need at least one bin, got {bins}")
        self.bins = int(bins)
        self.counts = np.zeros(self.bins, np.int64)
        self.prob_sums = np.zeros(self.bins, np.float64)
        self.truth_sums = np.zeros(self.bins, np.int64)
        self.nll_sum = 0.0

    @property
    def n(self) -> int:
        """Number of pixels added."""
        return int(self.counts.sum())

    def add(self, prob: np.ndarray, truth: np.ndarray) -> None:
        """Add p(tumour) in [0, 1] (any shape) and the bool truth of the same size."""
        p = np.asarray(prob, dtype=np.float64).ravel()
        t = np.asarray(truth).astype(bool).ravel()
        if p.shape != t.shape:
            raise ValueError(f"prob ({p.size}) and truth ({t.size}) differ in size")
        if p.size and not (np.all(p >= 0.0) and np.all(p <= 1.0)):  # also refuses NaN
            raise ValueError("probabilities must lie in [0, 1]")
        index = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)
        self.prob_sums += np.bincount(index, weights=p, minlength=self.bins)
        self.truth_sums += np.bincount(index[t], minlength=self.bins)
        q = np.clip(p, NLL_CLAMP, 1.0 - NLL_CLAMP)
        self.nll_sum += float(-np.log(np.where(t, q, 1.0 - q)).sum())

    def merge(self, other: "CalibrationAccumulator") -> None:
        """Add another accumulator's sums (same number of bins)."""
        if other.bins != self.bins:
            raise ValueError("cannot merge CalibrationAccumulator with different bins")
        self.counts += other.counts
        self.prob_sums += other.prob_sums
        self.truth_sums += other.truth_sums
        self.nll_sum += other.nll_sum

    def ece(self) -> float:
        """Expected calibration error (see the class docstring); NaN when empty."""
        n = self.n
        if n == 0:
            return float("nan")
        return float(np.abs(self.truth_sums - self.prob_sums).sum() / n)

    def nll(self) -> float:
        """Mean binary negative log-likelihood in nats; NaN when empty."""
        n = self.n
        return float("nan") if n == 0 else self.nll_sum / n
