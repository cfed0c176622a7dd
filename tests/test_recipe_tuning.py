"""The recipe grid of the tuning runs: its file is checked key by key, and the table reports every
variant (the losing ones too) beside the central model. The replay itself is checked in
test_experiment, where it reproduces an arm's first round."""

from __future__ import annotations

from pathlib import Path

import pytest

from ugafl.common.errors import ConfigError
from ugafl.simulations.recipe_tuning import load_grid, table

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_grid_loads_and_bad_variants_are_named(tmp_path: Path):
    settings, variants = load_grid(REPO / "simulations" / "grids" / "recipe_grid.toml")
    assert settings["seeds"] and settings["selections"] and len(variants) >= 5
    assert len({name for name, _ in variants}) == len(variants)
    bad = tmp_path / "grid.toml"
    bad.write_text('[[variant]]\nname = "x"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match=r"grid.toml \[\[variant\]\] x: unknown key\(s\) learning_rate; known: "):
        load_grid(bad)
    bad.write_text('[[variant]]\nlr = 0.1\n')
    with pytest.raises(ConfigError, match=r"\[\[variant\]\] #1: no name"):
        load_grid(bad)


def test_the_table_shows_every_variant_by_selection_and_its_lowest_run():
    rows = [{"variant": "central", "selection": "-", "seed": -1, "dice": {"external": 0.6}},
            {"variant": "a", "selection": "random", "seed": 0, "dice": {"external": 0.7}},
            {"variant": "a", "selection": "random", "seed": 1, "dice": {"external": 0.8}},
            {"variant": "a", "selection": "top-k", "seed": 0, "dice": {"external": 0.2}},
            {"variant": "b", "selection": "random", "seed": 0, "dice": {"external": 0.5}}]
    text = table(rows)
    assert "central model: 0.600" in text
    assert "| a | 0.750 (2) | 0.200 (1) | 0.200 |" in text
    assert "| b | 0.500 (1) | - | 0.500 |" in text
