"""The coordinator's acceptance gate (server.federation.gate): a round's aggregate is kept only if
the sites' held-out corrections, pooled, and the central validation do not get worse than allowed.
The whole round with the gate, on real sites in one process, is in test_federation_sim."""

from __future__ import annotations

import pytest

from ugafl.server.federation.gate import judge, pooled_dice
from ugafl.server.federation.sites import Reply


def counts(prefix: str, tp: float, fp: float, fn: float) -> dict[str, float]:
    return {f"{prefix}-tp": tp, f"{prefix}-fp": fp, f"{prefix}-fn": fn}


def test_pooled_dice_sums_the_counts_over_the_sites():
    replies = [Reply(1, counts("gate-held", 10, 0, 10)), Reply(2, counts("gate-held", 0, 20, 0)),
               Reply(3, {}, None, "Node Unavailable"), Reply(4, {"dice": 0.9})]
    assert pooled_dice(replies, "gate-held") == pytest.approx(20 / 50)  # not the mean of 0.67 and 0
    assert pooled_dice([Reply(1, counts("gate-held", 0, 0, 0))], "gate-held") == 1.0  # nothing to find, none found
    assert pooled_dice(replies[2:], "gate-held") is None


def test_the_gate_refuses_an_aggregate_that_lowers_the_held_out_dice():
    train = [Reply(1, counts("gate-incoming-held", 50, 10, 10)), Reply(2, counts("gate-incoming-held", 0, 0, 0))]
    worse = [Reply(1, counts("gate-held", 40, 10, 20)), Reply(2, counts("gate-held", 0, 5, 0))]
    verdict = judge(train, worse, held_drop=0.0, val_drop=0.01)
    assert not verdict.keep and "held-out Dice 0.8333 -> 0.6957" in verdict.reason
    assert verdict.metrics == {"gate-held-before": pytest.approx(0.833333, abs=1e-6),
                               "gate-held-after": pytest.approx(0.695652, abs=1e-6), "gate-kept": 0.0}
    assert judge(train, worse, held_drop=0.2, val_drop=0.01).keep  # within the allowed drop
    better = [Reply(1, counts("gate-held", 55, 5, 5)), Reply(2, counts("gate-held", 0, 0, 0))]
    assert judge(train, better, 0.0, 0.01).keep


def test_the_central_validation_may_drop_by_at_most_its_allowance():
    train = [Reply(0, counts("gate-incoming-val", 900, 100, 100))]  # Dice 0.9
    assert judge(train, [Reply(0, counts("gate-val", 891, 109, 109))], 0.0, 0.01).keep  # 0.891: -0.009
    refused = judge(train, [Reply(0, counts("gate-val", 880, 120, 120))], 0.0, 0.01)  # 0.88: -0.02
    assert not refused.keep and refused.reason.startswith("central validation Dice 0.9000 -> 0.8800")


def test_only_sites_that_answered_both_messages_are_pooled_and_nothing_reported_keeps_the_aggregate():
    train = [Reply(1, counts("gate-incoming-held", 50, 0, 0)), Reply(2, counts("gate-incoming-held", 50, 0, 0))]
    evaluate = [Reply(1, counts("gate-held", 50, 0, 0)), Reply(2, {}, None, "Node Unavailable")]
    assert judge(train, evaluate, 0.0, 0.01).keep  # site 2's missing answer is not a fall to zero
    nothing = judge([Reply(1, {"num-examples": 0.0})], [Reply(1, {"dice": 0.5})], 0.0, 0.01)
    assert nothing.keep and nothing.reason == "nothing to judge on" and nothing.metrics == {"gate-kept": 1.0}
