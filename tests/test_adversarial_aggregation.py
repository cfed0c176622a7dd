"""Hostile sites against the coordinator's aggregation (issue 16): a site that claims a huge, NaN
or negative example count or site weight must not take over the global model, under every
aggregation strategy and weighting; an aggregate that is not finite or moved further than the
round's accepted updates is never kept; trimmed means trim with 3 and 4 sites. Each refusal is
logged with the site and the reason."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from ugafl.server.federation.aggregation import AGGREGATION_NAMES, AGGREGATIONS, AggregationParams, check_aggregate
from ugafl.server.federation.rounds import aggregate
from ugafl.server.federation.settings import FederationSettings
from ugafl.server.federation.sites import Reply

REF = {"w": np.zeros((6, 6), np.float32), "steps": np.zeros((), np.int64)}


def moved(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((6, 6), value, np.float32), "steps": np.ones((), np.int64)}


def settings(aggregation: str, weighting: str, **extra) -> FederationSettings:
    return FederationSettings(central_checkpoint="-", out_dir="-", signing_key="-", aggregation=aggregation,
                              weighting=weighting, **extra)


def honest() -> list[Reply]:
    """Three honest sites, each with 10 corrected patches and a small update."""
    return [Reply(site, {"num-examples": 10.0, "site-weight": 1.0, "loss": 0.5}, moved(0.01 * site)) for site in (1, 2, 3)]


ATTACKS = {  # what the attacker reports beside an update 4x the honest ones' (inside the norm check)
    "examples 1e9": {"num-examples": 1e9, "site-weight": 1.0},
    "examples NaN": {"num-examples": math.nan, "site-weight": 1.0},
    "examples inf": {"num-examples": math.inf, "site-weight": 1.0},
    "examples -2.999": {"num-examples": -2.999, "site-weight": 1.0},
    "site weight 1e9": {"num-examples": 10.0, "site-weight": 1e9},
    "site weight NaN": {"num-examples": 10.0, "site-weight": math.nan},
    "site weight -2.999": {"num-examples": 10.0, "site-weight": -2.999},
}


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
@pytest.mark.parametrize("weighting", ["sites", "examples"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_site_cannot_take_over_the_global_model_with_what_it_reports(aggregation: str, weighting: str, attack: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    attacker = Reply(4, {**ATTACKS[attack], "loss": 1e6}, moved(0.08))
    cfg = settings(aggregation, weighting, max_examples=20)
    with caplog.at_level(logging.WARNING, logger="ugafl"):
        out = aggregate(1, [*honest(), attacker], REF, cfg)
    assert out.arrays is not None
    w = float(out.arrays["w"][0, 0])
    assert np.isfinite(out.arrays["w"]).all()
    count = ATTACKS[attack]["num-examples"]
    if not 0 <= count < math.inf:  # a count that is not a count refuses the update, under either weighting
        assert out.refused == [(4, f"reported num-examples {count}: not a finite count >= 0")]
        assert "round 1: site 4's update refused: reported num-examples" in caplog.text
    else:
        assert out.refused == [] and out.accepted == 4
    weights = [] if out.refused else ([1.0] * 4 if weighting == "sites" else [10.0, 10.0, 10.0, min(count, 20.0)])
    if aggregation in ("fedavg", "fedprox"):
        if out.refused:
            assert w == pytest.approx(0.02, abs=1e-6)  # the honest mean
        else:  # one vote each whatever weight the site claims, or its example count capped at max_examples
            assert w == pytest.approx(np.dot(weights, [0.01, 0.02, 0.03, 0.08]) / sum(weights), abs=1e-6)
    else:  # robust strategies: the attacker's value is cut away or outvoted
        assert 0.01 <= w <= 0.03 + 1e-6
    if weighting == "examples" and count == 1e9:
        assert "site 4 reported 1e+09 examples; counted as 20 (max_examples)" in caplog.text
    # the round's metrics are weighted by the coordinator's weights, not by the site's claims
    expected = 0.5 if out.refused else np.dot(weights, [0.5, 0.5, 0.5, 1e6]) / sum(weights)
    assert out.metrics["loss"] == pytest.approx(expected)


@pytest.mark.parametrize("sites", [3, 4])
def test_trimmed_mean_trims_with_three_or_four_sites(sites: int) -> None:
    updates = [{"w": np.array([v], np.float32)} for v in [1.0, 2.0, 3.0, 1000.0][4 - sites:]]
    out = AGGREGATIONS["fedtrimmedavg"](updates, [1.0] * sites, AggregationParams(trim_beta=0.2))["w"][0]
    assert out == pytest.approx(3.0 if sites == 3 else 2.5)  # the extreme value cut, not averaged in
    two = AGGREGATIONS["fedtrimmedavg"](updates[:2], [1.0, 1.0], AggregationParams(trim_beta=0.2))["w"][0]
    assert two == pytest.approx(np.mean([u["w"][0] for u in updates[:2]]))  # two sites: nothing to trim


def test_an_aggregate_that_is_not_finite_or_moved_too_far_is_refused() -> None:
    updates = [moved(0.01), moved(0.03)]
    assert check_aggregate(moved(0.02), REF, updates) == ""
    assert check_aggregate(moved(0.0), REF, updates) == ""  # no move at all is always allowed
    assert "not finite" in check_aggregate(moved(math.nan), REF, updates)
    too_far = check_aggregate(moved(0.5), REF, updates)
    assert too_far.startswith("it moved the model by 3.0") and "more than the accepted updates allow (0.1897)" in too_far


def test_a_broken_strategy_keeps_the_global_model_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A strategy plug-in with a bug (here: weights that do not sum to one) cannot put a bad model
    into the federation: the round keeps the model it had."""
    monkeypatch.setitem(AGGREGATIONS, "fedavg", lambda updates, weights, params: {
        k: sum(np.asarray(u[k]) * 5 for u in updates) for k in updates[0]})
    with caplog.at_level(logging.WARNING, logger="ugafl"):
        out = aggregate(3, honest(), REF, settings("fedavg", "sites"))
    assert out.arrays is None and out.accepted == 3
    assert "round 3: the aggregate was refused: it moved the model by" in caplog.text
    assert "the global model stays as it was" in caplog.text
