"""Per-pixel uncertainty measures on hand-made ensemble probabilities, and tissue-only patch means."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ugafl.common.uncertainty_measures import (
    MEASURES,
    compute_measures,
    expected_entropy,
    mean_probability,
    mutual_information,
    patch_scores,
    predictive_entropy,
    uga_score,
)

LN2 = math.log(2.0)


def constant_probs(members: list[list[float]], b: int = 2, h: int = 3, w: int = 4) -> torch.Tensor:
    """(M, B, C, H, W) where member m has the class vector members[m] at every pixel."""
    p = torch.tensor(members, dtype=torch.float32)  # (M, C)
    return p[:, None, :, None, None].expand(-1, b, -1, h, w).contiguous()


def dirichlet_probs(seed: int, m: int, b: int, c: int, h: int, w: int, alpha: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(c, alpha), size=(m, b, h, w))  # (M, B, H, W, C)
    return torch.from_numpy(np.moveaxis(p, -1, 2).copy())


def test_shapes_and_float32():
    probs = dirichlet_probs(0, m=3, b=2, c=4, h=5, w=6).to(torch.float64)
    assert mean_probability(probs).shape == (2, 4, 5, 6)
    for f in (predictive_entropy, expected_entropy, mutual_information, uga_score):
        out = f(probs)
        assert out.shape == (2, 5, 6) and out.dtype == torch.float32
    maps = compute_measures(probs.to(torch.float16))
    assert tuple(maps) == MEASURES
    assert all(v.shape == (2, 5, 6) and v.dtype == torch.float32 for v in maps.values())


def test_refuses_wrong_layout():
    with pytest.raises(ValueError, match=r"\(M, B, C, H, W\)"):
        predictive_entropy(torch.ones(2, 2, 4, 4))


def test_known_entropies():
    uniform = constant_probs([[0.5, 0.5], [0.5, 0.5]])
    torch.testing.assert_close(predictive_entropy(uniform), torch.full((2, 3, 4), LN2))
    one_hot = constant_probs([[1.0, 0.0]])
    assert torch.equal(predictive_entropy(one_hot), torch.zeros(2, 3, 4))
    skewed = constant_probs([[0.9, 0.1]])
    by_hand = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325083 nats
    torch.testing.assert_close(predictive_entropy(skewed), torch.full((2, 3, 4), by_hand))
    # Expected entropy averages the members' own entropies.
    mixed = constant_probs([[0.5, 0.5], [1.0, 0.0]])
    torch.testing.assert_close(expected_entropy(mixed), torch.full((2, 3, 4), LN2 / 2))


@pytest.mark.parametrize("p", [[0.5, 0.5], [0.9, 0.1], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
def test_mutual_information_is_zero_when_members_agree(p):
    probs = constant_probs([p, p, p])
    mi = mutual_information(probs)
    assert torch.all(mi >= 0) and torch.allclose(mi, torch.zeros_like(mi), atol=1e-6)
    # With agreeing members the UGA score is just the entropy (every KL term is zero).
    torch.testing.assert_close(uga_score(probs), predictive_entropy(probs))


def test_opposite_one_hot_members():
    probs = constant_probs([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(predictive_entropy(probs), torch.full((2, 3, 4), LN2))
    torch.testing.assert_close(expected_entropy(probs), torch.zeros(2, 3, 4))
    torch.testing.assert_close(mutual_information(probs), torch.full((2, 3, 4), LN2))
    uga = uga_score(probs)  # each member misses half the mean: 0.5 * -log(EPS)
    assert torch.all(torch.isfinite(uga))
    torch.testing.assert_close(uga, torch.full((2, 3, 4), 0.5 * -math.log(1e-8)))


def test_no_nan_with_exact_zeros():
    probs = torch.zeros(3, 2, 3, 4, 4)
    probs[0, :, 0] = 1.0
    probs[1, :, 1] = 1.0
    probs[2, :, 2] = 1.0
    for value in compute_measures(probs).values():
        assert torch.all(torch.isfinite(value))


def test_uga_equals_entropy_plus_mean_kl():
    probs = dirichlet_probs(1, m=5, b=2, c=3, h=4, w=4)
    p = probs.numpy().astype(np.float64)  # independent float64 reference, no zeros here
    mean = p.mean(axis=0)
    entropy = -(mean * np.log(mean)).sum(axis=1)
    kl = (mean[None] * (np.log(mean[None]) - np.log(p))).sum(axis=2).mean(axis=0)
    np.testing.assert_allclose(uga_score(probs).numpy(), entropy + kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictive_entropy(probs).numpy(), entropy, rtol=1e-5, atol=1e-6)


def test_compute_measures_matches_the_single_functions():
    probs = dirichlet_probs(2, m=4, b=3, c=2, h=5, w=5, alpha=0.3)
    maps = compute_measures(probs)
    torch.testing.assert_close(maps["entropy"], predictive_entropy(probs))
    torch.testing.assert_close(maps["mutual_information"], mutual_information(probs))
    torch.testing.assert_close(maps["uga"], uga_score(probs))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 6),
    c=st.integers(2, 5),
    alpha=st.sampled_from([0.01, 0.1, 1.0, 10.0]),
)
def test_uga_at_least_entropy_and_mi_in_range(seed, m, c, alpha):
    probs = dirichlet_probs(seed, m=m, b=2, c=c, h=4, w=4, alpha=alpha).float()
    maps = compute_measures(probs)
    assert all(torch.all(torch.isfinite(v)) for v in maps.values())
    assert torch.all(maps["uga"] >= maps["entropy"] - 1e-5)
    assert torch.all(maps["mutual_information"] >= 0)
    assert torch.all(maps["mutual_information"] <= maps["entropy"] + 1e-5)
    assert torch.all(maps["entropy"] <= math.log(c) + 1e-5)


def test_patch_scores_ignore_background_and_give_nan_without_tissue():
    probs = torch.zeros(2, 3, 2, 4, 4)  # M=2, B=3
    probs[:, :, 0] = 1.0  # certain everywhere...
    probs[0, 0, :, :2] = torch.tensor([1.0, 0.0])[:, None, None]  # ...patch 0 background rows:
    probs[1, 0, :, :2] = torch.tensor([0.0, 1.0])[:, None, None]  # members disagree completely
    probs[:, 1] = 0.5  # patch 1: uniform everywhere
    tissue = torch.zeros(3, 4, 4, dtype=torch.bool)
    tissue[0, 2:] = True  # patch 0: tissue only where certain
    tissue[1, 1:3, 1:3] = True
    maps = compute_measures(probs)
    assert maps["entropy"][0, :2].min() > 0.69  # background really is maximally uncertain
    scores = patch_scores(maps, tissue)
    assert set(scores) == set(MEASURES)
    for name in MEASURES:
        assert scores[name].shape == (3,) and scores[name].dtype == np.float64
        assert scores[name][0] == pytest.approx(0.0, abs=1e-6)
        assert np.isnan(scores[name][2])  # no tissue at all
    assert scores["entropy"][1] == pytest.approx(LN2, rel=1e-6)
    assert scores["mutual_information"][1] == pytest.approx(0.0, abs=1e-6)


def test_patch_scores_accept_numpy_and_average_tissue_pixels():
    values = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    tissue = np.zeros((2, 2, 3), bool)
    tissue[0, 0, :2] = True  # values 0, 1
    tissue[1] = True  # values 6..11
    scores = patch_scores({"x": values, "t": torch.from_numpy(values)}, tissue)
    np.testing.assert_allclose(scores["x"], [0.5, 8.5])
    np.testing.assert_allclose(scores["t"], [0.5, 8.5])
    with pytest.raises(ValueError, match="differ in shape"):
        patch_scores({"x": values[:, :1]}, tissue)


def test_the_papers_patch_score_sums_tissue_and_rewards_a_concentrated_peak():
    from ugafl.common.patch_scoring import PEAK_WEIGHT, paper_score

    tissue = np.ones((3, 10, 10), bool)
    values = np.zeros((3, 10, 10))
    values[0] = 0.1  # moderate everywhere: mean 0.1
    values[1, :2, :2] = 0.9  # a small focus of high uncertainty: mean 0.036
    values[2, :5] = 0.3
    tissue[2, :5] = False  # the uncertain half is background: left out of the sum and the peak
    tumour = np.zeros_like(tissue)
    score = paper_score(values, tissue, tumour)
    # the whole patch is "at or above 0.8 of its maximum" when the map is flat
    assert score[0] == pytest.approx(100 * 0.1 + PEAK_WEIGHT * 100)
    assert score[1] == pytest.approx(4 * 0.9 + PEAK_WEIGHT * 4)
    assert score[2] == pytest.approx(0.0)  # half tissue (the floor) and nothing uncertain on it: no peak term
    mean = patch_scores({"uga": values}, tissue, "mean")["uga"]
    assert mean[0] > mean[1]  # the mean ranks by the level of uncertainty, the sum by its amount


def test_the_papers_tissue_floor_keeps_predicted_tumour():
    from ugafl.common.patch_scoring import TISSUE_FLOOR, paper_score

    tissue = np.zeros((3, 10, 10), bool)
    tissue[:, :4] = True  # 40% tissue: under the floor
    assert tissue[0].mean() < TISSUE_FLOOR
    values = np.full((3, 10, 10), 0.5)
    tumour = np.zeros_like(tissue)
    tumour[1, 0, 0] = True  # tumour predicted on this patch's tissue: kept
    tumour[2, 9, 9] = True  # tumour predicted only on its glass: does not count
    score = paper_score(values, tissue, tumour)
    assert np.isnan(score[0]) and np.isfinite(score[1]) and np.isnan(score[2])
    assert np.isnan(paper_score(values[:1], np.zeros((1, 10, 10), bool), tumour[:1])[0])  # no tissue at all


def test_every_scoring_has_its_own_column():
    maps = {"uga": np.random.default_rng(0).random((2, 8, 8)), "entropy": np.zeros((2, 8, 8))}
    tissue = np.ones((2, 8, 8), bool)
    scores = patch_scores(maps, tissue, "all")
    assert set(scores) == {"uga", "uga_paper", "entropy", "entropy_paper"}
    assert np.allclose(scores["uga"], maps["uga"].mean(axis=(1, 2)))
    assert np.allclose(scores["uga_paper"], patch_scores(maps, tissue, "paper")["uga"])
