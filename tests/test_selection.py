"""Patch selection: the strategies against their definitions, overlap handling, loading."""

from __future__ import annotations

import numpy as np
import pytest

from ugafl.common.selection import SELECTION_NAMES, Candidates, exclude, load_candidates, select
from ugafl.common.errors import DataError

P = 256  # patch side, level-0 px


def grid(n: int, slides: int = 3, stride: int = P, size: int = P, seed: int = 0, nan_frac: float = 0.0) -> Candidates:
    """n boxes on a regular grid (stride px apart) spread over `slides` slides, random scores."""
    rng = np.random.default_rng(seed)
    per = -(-n // slides)
    cols = max(1, int(np.ceil(np.sqrt(per))))
    i = np.arange(n)
    slide, k = i % slides, i // slides
    score = rng.random(n)
    score[rng.random(n) < nan_frac] = np.nan
    return Candidates(slide, (k % cols) * stride, (k // cols) * stride, np.full(n, size), np.full(n, size), score)


def boxes(rows: list[tuple[int, int, int, int, int]], score=None) -> Candidates:
    a = np.array(rows, np.int64).reshape(-1, 5)
    s = np.zeros(len(a)) if score is None else np.asarray(score, float)
    return Candidates(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], s)


def reference_stochastic_batch(score: np.ndarray, budget: int, seed: int, batches: int | None = None) -> list[int]:
    """The definition, written out: shuffle the valid candidates, Q batches of B, best mean wins."""
    valid = [i for i in range(len(score)) if np.isfinite(score[i])]
    perm = [valid[j] for j in np.random.default_rng(seed).permutation(len(valid))]
    q = len(valid) // budget if batches is None else batches
    best, best_mean = None, -np.inf
    for b in range(q):
        batch = perm[b * budget:(b + 1) * budget]
        m = sum(score[i] for i in batch) / budget
        if m > best_mean:
            best, best_mean = batch, m
    return best


def overlapping_pairs(c: Candidates, idx: np.ndarray) -> int:
    n = 0
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            i, j = idx[a], idx[b]
            if c.slide[i] == c.slide[j] and c.x[i] < c.x[j] + c.width[j] and c.x[j] < c.x[i] + c.width[i] \
                    and c.y[i] < c.y[j] + c.height[j] and c.y[j] < c.y[i] + c.height[i]:
                n += 1
    return n


@pytest.mark.parametrize("n,budget,seed", [(100, 10, 0), (1000, 10, 1), (1000, 37, 2), (5000, 100, 3), (64, 8, 4),
                                           (101, 10, 5)])
def test_stochastic_batch_matches_definition(n, budget, seed):
    c = grid(n, seed=seed)
    got = select(c, "stochastic-batch", budget, seed)
    assert list(got) == reference_stochastic_batch(c.score, budget, seed)


def test_stochastic_batch_batches_override_and_nan():
    c = grid(2000, seed=7, nan_frac=0.2)
    for q in (1, 3, 50):
        assert list(select(c, "stochastic-batch", 20, 11, batches=q)) == reference_stochastic_batch(c.score, 20, 11, q)
    # more batches than fit: clamped to ⌊N/B⌋
    n_valid = int(np.isfinite(c.score).sum())
    assert list(select(c, "stochastic-batch", 20, 11, batches=10 ** 6)) == \
        reference_stochastic_batch(c.score, 20, 11, n_valid // 20)


def test_stochastic_batch_differs_from_top_k():
    c = grid(5000, seed=1)
    top = select(c, "top-k", 20, 0)
    for seed in range(5):
        sb = select(c, "stochastic-batch", 20, seed)
        assert len(sb) == 20
        assert c.score[top].mean() >= c.score[sb].mean()
        assert set(top) != set(sb)


def test_stochastic_batch_single_batch_equals_top_k():
    c = grid(30, seed=2)
    assert set(select(c, "stochastic-batch", 30, 9)) == set(select(c, "top-k", 30, 0)) == set(range(30))
    # one batch of everything also when batches=1 is forced on a larger pool: it is the first B of the shuffle
    c = grid(40, seed=3)
    got = select(c, "stochastic-batch", 10, 5, batches=1)
    perm = np.random.default_rng(5).permutation(40)
    assert list(got) == list(perm[:10])


def test_top_k_picks_highest_with_index_ties():
    c = grid(1000, seed=4)
    got = select(c, "top-k", 25, 0)
    assert list(got) == list(np.argsort(-c.score, kind="stable")[:25])
    tied = Candidates(c.slide[:10], c.x[:10], c.y[:10], c.width[:10], c.height[:10], np.array([1, 3, 3, 2, 3, 0, 3, 1, 1, 1.]))
    assert list(select(tied, "top-k", 3, 0)) == [1, 2, 4]


def test_random_uniform_and_deterministic():
    c = grid(50, seed=5)
    budget, runs = 5, 4000
    counts = np.zeros(50)
    for seed in range(runs):
        got = select(c, "random", budget, seed)
        assert len(got) == budget and len(set(got)) == budget
        counts[got] += 1
    freq = counts / runs
    expected = budget / 50  # 0.1; binomial sd ~0.0047
    assert np.abs(freq - expected).max() < 0.025
    assert list(select(c, "random", budget, 123)) == list(select(c, "random", budget, 123))
    assert list(select(c, "random", budget, 123)) != list(select(c, "random", budget, 124))


@pytest.mark.parametrize("strategy", SELECTION_NAMES)
def test_deterministic_per_seed(strategy):
    c = grid(3000, seed=6, nan_frac=0.1)
    assert np.array_equal(select(c, strategy, 40, 3), select(c, strategy, 40, 3))


@pytest.mark.parametrize("strategy", SELECTION_NAMES)
def test_nan_never_selected_and_short_pool(strategy):
    c = grid(400, seed=8, nan_frac=0.5)
    c.score[: 50] = np.inf if strategy == "top-k" else c.score[:50]  # inf is not a usable score either
    for seed in range(5):
        got = select(c, strategy, 30, seed)
        assert len(got) == 30
        assert np.isfinite(c.score[got]).all()
    few = grid(20, seed=9)
    few.score[[0, 3, 5, 7, 11, 19, 13]] = np.nan
    valid = set(np.flatnonzero(np.isfinite(few.score)))
    got = select(few, strategy, 50, 1)
    assert set(got) == valid and len(got) == len(valid)
    all_nan = grid(10)
    all_nan.score[:] = np.nan
    assert select(all_nan, strategy, 5, 0).size == 0


def test_bad_arguments():
    c = grid(10)
    with pytest.raises(ValueError, match="budget"):
        select(c, "top-k", 0, 0)
    with pytest.raises(ValueError, match="unknown selection strategy 'best'"):
        select(c, "best", 5, 0)
    with pytest.raises(ValueError, match="batches"):
        select(c, "stochastic-batch", 5, 0, batches=0)
    with pytest.raises(ValueError, match="max_per_slide"):
        select(c, "top-k", 5, 0, max_per_slide=0)


def test_exclude_exact_overlap_rules():
    taken = boxes([(0, 1000, 1000, 256, 256)])
    cand = boxes([
        (0, 1000, 1000, 256, 256),   # 0 identical -> out
        (0, 1255, 1255, 256, 256),   # 1 one-pixel corner overlap -> out
        (0, 1256, 1000, 256, 256),   # 2 touches the right edge -> kept
        (0, 744, 1000, 256, 256),    # 3 touches the left edge -> kept
        (0, 1000, 1256, 256, 256),   # 4 touches the bottom edge -> kept
        (0, 1000, 744, 256, 256),    # 5 touches the top edge -> kept
        (0, 1256, 1256, 256, 256),   # 6 touches a corner -> kept
        (1, 1000, 1000, 256, 256),   # 7 same place, other slide -> kept
        (0, 745, 745, 256, 256),     # 8 overlaps by one pixel top-left -> out
        (0, 1100, 1100, 10, 10),     # 9 inside -> out
        (0, 0, 0, 4000, 4000),       # 10 contains it (much larger box) -> out
        (0, 5000, 5000, 256, 256),   # 11 far away -> kept
        (0, 1128, 872, 256, 256),    # 12 half-stride neighbour -> out
    ], score=np.arange(13.))
    kept = exclude(cand, taken)
    assert list(kept.score) == [2, 3, 4, 5, 6, 7, 11]


def test_exclude_matches_brute_force_random():
    rng = np.random.default_rng(0)
    n, m = 3000, 200
    cand = Candidates(rng.integers(0, 3, n), rng.integers(0, 5000, n), rng.integers(0, 5000, n),
                      rng.integers(50, 400, n), rng.integers(50, 400, n), np.arange(n, dtype=float))
    taken = Candidates(rng.integers(0, 3, m), rng.integers(0, 5000, m), rng.integers(0, 5000, m),
                       rng.integers(10, 800, m), rng.integers(10, 800, m), np.zeros(m))
    ov = (cand.slide[:, None] == taken.slide) & (cand.x[:, None] < taken.x + taken.width) & \
         (taken.x < cand.x[:, None] + cand.width[:, None]) & (cand.y[:, None] < taken.y + taken.height) & \
         (taken.y < cand.y[:, None] + cand.height[:, None])
    expected = np.flatnonzero(~ov.any(axis=1)).astype(float)
    assert 0 < len(expected) < n
    assert np.array_equal(exclude(cand, taken).score, expected)
    assert len(exclude(cand, Candidates.empty())) == n


@pytest.mark.parametrize("strategy", SELECTION_NAMES)
def test_no_overlap_within_choice_on_half_stride_grid(strategy):
    c = grid(3000, slides=2, stride=P // 2, seed=10)
    for seed in range(4):
        got = select(c, strategy, 40, seed)
        assert len(got) == 40 and len(set(got)) == 40
        assert overlapping_pairs(c, got) == 0


def test_stochastic_batch_replacement_walk():
    """Conflicting members of the best batch are replaced by the next candidates after the batch."""
    # two identical boxes (always overlap) and many disjoint ones
    c = grid(60, slides=1, seed=12)
    c.x[1], c.y[1] = c.x[0], c.y[0]
    budget, seed = 6, 3
    perm = np.random.default_rng(seed).permutation(60)
    batches = perm[:60].reshape(10, budget)
    best = int(np.argmax(c.score[batches].mean(axis=1)))
    order = list(np.concatenate([perm[best * budget:], perm[:best * budget]]))
    expected, seen_pair = [], False
    for i in order:
        if i in (0, 1):
            if seen_pair:
                continue
            seen_pair = True
        expected.append(i)
        if len(expected) == budget:
            break
    assert list(select(c, "stochastic-batch", budget, seed)) == expected


@pytest.mark.parametrize("strategy", SELECTION_NAMES)
def test_max_per_slide(strategy):
    c = grid(2000, slides=5, seed=13)
    c.score[c.slide == 0] += 10  # slide 0 would win everything
    got = select(c, strategy, 20, 2, max_per_slide=4)
    assert len(got) == 20
    assert np.bincount(c.slide[got], minlength=5).max() <= 4
    assert np.bincount(c.slide[got], minlength=5).tolist() == [4] * 5
    top = select(c, "top-k", 20, 0, max_per_slide=3)
    assert len(top) == 15  # 5 slides × 3: the cap wins over the budget


def _write(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_load_candidates(tmp_path):
    header = ["x", "y", "width", "height", "mpp", "tissue_fraction", "tumour_fraction", "entropy",
              "mutual_information", "uga"]
    a = _write(tmp_path / "case_01.mc_dropout.csv", header,
               [(0, 0, 512, 512, 0.5, 0.9, 0.1, 0.3, 0.05, 0.21), (512, 0, 512, 512, 0.5, 0.0, 0.0, "", "", "")])
    b = _write(tmp_path / "case.02.svs.mc_dropout.csv", header, [(1024, 512, 512, 512, 0.5, 0.8, 0.5, 0.6, 0.1, 0.4)])
    c, names = load_candidates([a, b])
    assert names == ["case_01", "case.02.svs"]
    assert c.slide.tolist() == [0, 0, 1]
    assert c.x.tolist() == [0, 512, 1024] and c.y.tolist() == [0, 0, 512] and c.width.tolist() == [512] * 3
    assert c.score[0] == pytest.approx(0.21) and np.isnan(c.score[1]) and c.score[2] == pytest.approx(0.4)
    e, _ = load_candidates([a, b], measure="entropy")
    assert e.score[2] == pytest.approx(0.6)
    assert list(select(c, "top-k", 5, 0)) == [2, 0]
    # header-only table (slide with no tissue patches) contributes nothing
    empty = _write(tmp_path / "blank.mc_dropout.csv", ["x", "y", "width", "height", "mpp"], [])
    c2, names2 = load_candidates([empty, a])
    assert names2 == ["case_01"] and len(c2) == 2


def test_load_candidates_missing_measure(tmp_path):
    path = _write(tmp_path / "s1.edue.csv", ["x", "y", "width", "height", "mpp", "entropy", "variance"],
                  [(0, 0, 256, 256, 0.5, 0.1, 0.2)])
    with pytest.raises(DataError, match=r"s1\.edue\.csv.*'uga'"):
        load_candidates([path], measure="uga")
    c, _ = load_candidates([path], measure="variance")
    assert c.score.tolist() == [0.2]
    with pytest.raises(DataError, match="missing.csv"):
        load_candidates([tmp_path / "missing.csv"])
    bad = _write(tmp_path / "s2.edue.csv", ["x", "y", "width", "height", "variance"], [(0, 0, 256, 256, "abc")])
    with pytest.raises(DataError, match=r"s2\.edue\.csv: line 2, column 'variance'"):
        load_candidates([bad], measure="variance")
