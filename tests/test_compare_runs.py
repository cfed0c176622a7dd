"""Two runs compared on the seeds both have: means, and the paired difference with its interval."""

from __future__ import annotations

import pytest

from ugafl.common.errors import UgaflError
from ugafl.simulations.compare_runs import compare, markdown

CENTRES = ["A", "B"]


def run(values: dict[int, dict[str, list[float]]], selection: str = "stochastic-batch") -> dict:
    """results.json with one strategy arm per seed: values[seed][count] = Dice per centre."""
    return {"arms": [{"kind": "strategy", "selection": selection, "method": "tta", "seed": seed,
                      "dice": {count: dict(zip(CENTRES, dice)) for count, dice in by_count.items()}}
                     for seed, by_count in values.items()]
            + [{"kind": "null", "selection": "random", "method": "tta", "seed": 0, "dice": {"5": {"A": 0, "B": 0}}}]}


def test_the_difference_is_paired_on_common_seeds() -> None:
    a = run({0: {"5": [0.6, 0.7]}, 1: {"5": [0.8, 0.9]}, 2: {"5": [0.1, 0.1]}})
    b = run({0: {"5": [0.5, 0.6]}, 1: {"5": [0.7, 0.8]}})  # seed 2 not run: left out of both sides
    result = compare(a, b, CENTRES, "stochastic-batch")
    assert result["seeds"] == [0, 1]
    r = result["counts"]["5"]
    assert r["a"][0] == pytest.approx(0.75) and r["b"][0] == pytest.approx(0.65)
    assert r["b_minus_a"] == pytest.approx(-0.1) and r["ci95"] == pytest.approx((-0.1, -0.1))  # the same in every cell
    assert "| +5 | 0.750 ± 0.141 | 0.650 ± 0.141 | -0.100 [-0.100, -0.100] |" in markdown(result, "plain", "dp")


def test_no_common_seed_is_an_error() -> None:
    with pytest.raises(UgaflError, match="no seed of tta / top-k is in both runs"):
        compare(run({0: {"5": [0.6, 0.7]}}), run({1: {"5": [0.6, 0.7]}}), CENTRES, "top-k")
