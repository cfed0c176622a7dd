"""Error-detection AUROC (exact and binned), correlations and calibration accumulators."""

import itertools
import math

import numpy as np
import pytest

from ugafl.common.uncertainty_quality import (
    BinnedAuroc,
    CalibrationAccumulator,
    auroc,
    pearson,
    spearman,
)


def brute_force_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal), over all pairs."""
    pos, neg = scores[labels], scores[~labels]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_auroc_extremes_and_ties():
    labels = np.array([False] * 5 + [True] * 5)
    scores = np.arange(10.0)
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    assert auroc(np.ones(10), labels) == 0.5
    assert math.isnan(auroc(scores, np.ones(10, bool)))
    assert math.isnan(auroc(scores, np.zeros(10, bool)))


def test_auroc_random_is_half():
    rng = np.random.default_rng(0)
    assert auroc(rng.random(20000), rng.random(20000) < 0.3) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(7, 8)).astype(float)  # many ties, 2-D input
    labels = rng.random((7, 8)) < 0.4
    assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores.ravel(), labels.ravel()))


def test_auroc_drops_nan_scores():
    scores = np.array([0.1, np.nan, 0.9, 0.2])
    labels = np.array([False, True, True, False])
    assert auroc(scores, labels) == 1.0


def realistic_pixels(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Entropy-like scores in [0, ln 2]: most pixels confident and right, errors uncertain."""
    error = rng.random(n) < 0.08
    scores = np.where(error, rng.beta(1.2, 2.0, n), rng.beta(0.4, 4.0, n)) * math.log(2)
    return scores.astype(np.float32), error


def test_binned_auroc_matches_exact_on_millions_of_pixels():
    rng = np.random.default_rng(3)
    scores, labels = realistic_pixels(rng, 3_000_000)
    binned = BinnedAuroc(low=0.0, high=math.log(2), bins=4096)
    for start in range(0, scores.size, 500_000):
        binned.add(scores[start : start + 500_000], labels[start : start + 500_000])
    assert binned.n == scores.size
    exact = auroc(scores, labels)
    assert 0.7 < exact < 0.95
    assert binned.value() == pytest.approx(exact, abs=0.005)


def test_binned_auroc_chunks_clipping_and_degenerate_cases():
    rng = np.random.default_rng(4)
    scores, labels = realistic_pixels(rng, 10_000)
    whole, chunked = BinnedAuroc(0.0, 1.0, 256), BinnedAuroc(0.0, 1.0, 256)
    whole.add(scores, labels)
    for part in np.array_split(np.arange(scores.size), 7):
        chunked.add(scores[part], labels[part])
    assert whole.value() == chunked.value()
    merged = BinnedAuroc(0.0, 1.0, 256)
    merged.merge(whole)
    assert merged.value() == whole.value()
    # Out-of-range scores land in the end bins: separation is kept.
    clipped = BinnedAuroc(0.0, 1.0, 16)
    clipped.add(np.array([-5.0, 0.01, 0.99, 7.0]), np.array([False, False, True, True]))
    assert clipped.value() == 1.0
    same = BinnedAuroc()
    same.add(np.full(100, 0.3), np.arange(100) % 2 == 0)
    assert same.value() == 0.5
    one_class = BinnedAuroc()
    one_class.add(np.array([0.1, 0.2]), np.array([True, True]))
    assert math.isnan(one_class.value())
    with pytest.raises(ValueError):
        BinnedAuroc(1.0, 1.0)


def test_spearman_and_pearson():
    x = np.arange(1.0, 11.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert pearson(x, np.exp(x)) < 0.9  # monotone but not linear
    assert pearson(x, 3 * x - 2) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    with_nan = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    other = np.array([2.0, 4.0, -100.0, 8.0, np.nan])
    assert spearman(with_nan, other) == pytest.approx(1.0)  # 3 pairs left
    assert pearson(with_nan, other) == pytest.approx(1.0)
    assert math.isnan(spearman([1.0, 2.0, np.nan], [1.0, 2.0, 3.0]))  # 2 pairs only
    assert math.isnan(pearson([1.0, 2.0], [3.0, 4.0]))
    assert math.isnan(pearson(np.ones(5), x[:5]))  # constant side


def test_ece_near_zero_when_calibrated_and_large_when_over_confident():
    rng = np.random.default_rng(5)
    p = rng.random(1_000_000)
    calibrated = CalibrationAccumulator(bins=15)
    calibrated.add(p, rng.random(p.size) < p)  # truth ~ Bernoulli(p)
    assert calibrated.ece() < 0.005
    # p ~ U(0, 1): the expected NLL is the mean binary entropy, 1/2 nat (sampling sd ~0.0003)
    assert calibrated.nll() == pytest.approx(0.5, abs=0.003)
    over = CalibrationAccumulator(bins=15)
    over.add(np.where(p > 0.5, 0.99, 0.01), rng.random(p.size) < p)  # says 99 % when right 75 %
    assert over.ece() == pytest.approx(0.99 - 0.75, abs=0.005)  # both halves 0.24 off
    # right 3 times in 4 at -ln 0.99, wrong once at -ln 0.01 (sampling sd ~0.002)
    assert over.nll() == pytest.approx(-(0.75 * math.log(0.99) + 0.25 * math.log(0.01)), abs=0.01)


def test_ece_and_nll_by_hand():
    acc = CalibrationAccumulator(bins=2)
    acc.add(np.array([0.8, 0.3, 0.6, 0.0]), np.array([True, False, False, True]))
    assert acc.n == 4
    # Bin [0, .5): p 0.3, 0.0 vs truth 0, 1 -> |0.5 - 0.15|; bin [.5, 1]: p 0.8, 0.6 vs 1, 0 -> |0.5 - 0.7|.
    assert acc.ece() == pytest.approx(0.5 * 0.35 + 0.5 * 0.2)
    by_hand = -(math.log(0.8) + math.log(0.7) + math.log(0.4) + math.log(1e-7)) / 4
    assert acc.nll() == pytest.approx(by_hand)
    top = CalibrationAccumulator(bins=10)
    top.add(np.array([1.0]), np.array([True]))  # p = 1 falls in the last bin
    assert top.counts[-1] == 1 and top.ece() == 0.0
    assert top.nll() == pytest.approx(-math.log(1 - 1e-7))


def test_calibration_chunks_equal_one_go_and_refuses_bad_input():
    rng = np.random.default_rng(6)
    p = rng.random((50, 40)).astype(np.float32)
    truth = rng.random((50, 40)) < p
    whole, chunked = CalibrationAccumulator(), CalibrationAccumulator()
    whole.add(p, truth)
    for rows in np.array_split(np.arange(50), 6):
        chunked.add(p[rows], truth[rows])
    assert chunked.n == whole.n == 2000
    assert chunked.ece() == pytest.approx(whole.ece(), abs=1e-12)
    assert chunked.nll() == pytest.approx(whole.nll(), rel=1e-12)
    merged = CalibrationAccumulator()
    merged.merge(whole)
    assert merged.ece() == whole.ece()
    assert math.isnan(CalibrationAccumulator().ece()) and math.isnan(CalibrationAccumulator().nll())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        whole.add(np.array([1.2]), np.array([True]))
    with pytest.raises(ValueError, match="differ in size"):
        whole.add(np.array([0.2, 0.3]), np.array([True]))
