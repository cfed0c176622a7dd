"""Server-side update checks: wrong keys, shapes, dtypes, NaN/Inf and outlying norms are refused
with the node id and a reason; good updates pass."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ugafl.server.federation.update_checks import check_round

REF = {"conv.weight": np.zeros((4, 3, 3, 3), np.float32), "conv.bias": np.zeros(4, np.float32),
       "bn.num_batches_tracked": np.zeros((), np.int64)}


def update(seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, scale, v.shape).astype(v.dtype)) if v.dtype == np.float32 else v.copy()
            for k, v in REF.items()}


def test_good_updates_pass() -> None:
    updates = {1: update(1), 2: update(2), 3: update(3)}
    verdicts = check_round(updates, REF)
    assert [v.accepted for v in verdicts] == [True, True, True]
    assert [v.reason for v in verdicts] == ["", "", ""]
    # The reference is all zeros: each delta norm is the L2 norm of the update's float arrays.
    for v in verdicts:
        u = updates[v.node_id]
        by_hand = np.sqrt(sum(np.sum(u[k].astype(np.float64) ** 2) for k in ("conv.weight", "conv.bias")))
        assert v.delta_norm == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("name, corrupt, reason", [
    ("NaN", lambda u: u["conv.weight"].__setitem__((0, 0, 0, 0), np.nan), "NaN or infinite value(s) in conv.weight"),
    ("Inf", lambda u: u["conv.bias"].__setitem__(1, np.inf), "NaN or infinite value(s) in conv.bias"),
    ("wrong shape", lambda u: u.__setitem__("conv.bias", np.zeros(5, np.float32)), "wrong shape for conv.bias: (5,)"),
    ("wrong dtype", lambda u: u.__setitem__("conv.bias", np.zeros(4, np.float64)), "wrong dtype for conv.bias"),
    ("missing key", lambda u: u.pop("conv.bias"), "wrong keys: missing conv.bias"),
    ("extra key", lambda u: u.__setitem__("evil", np.zeros(1, np.float32)), "wrong keys: unexpected evil"),
    ("huge norm", lambda u: u["conv.weight"].__imul__(1000.0), "more than 10x the median"),
])
def test_bad_updates_are_refused_with_the_node_id(caplog, name, corrupt, reason) -> None:
    bad = update(7)
    corrupt(bad)
    with caplog.at_level(logging.WARNING):
        verdicts = {v.node_id: v for v in check_round({11: update(1), 22: bad, 33: update(3)}, REF)}
    assert verdicts[11].accepted and verdicts[33].accepted
    assert not verdicts[22].accepted and reason in verdicts[22].reason
    assert "node 22" in caplog.text and reason in caplog.text


def test_two_sites_are_compared_with_each_other_and_one_site_alone_is_kept() -> None:
    big = update(2, scale=5.0)
    verdicts = check_round({1: update(1), 2: big}, REF)
    assert [v.accepted for v in verdicts] == [True, False]
    assert check_round({2: big}, REF)[0].accepted
