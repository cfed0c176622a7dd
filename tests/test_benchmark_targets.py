"""Issue 15's targets computed from a benchmark run: on the committed issue-14 run (the plain
recipe, whose first rounds collapsed) and on a made-up run with pooled references."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ugafl.simulations.benchmark_targets import check_targets, main

PLAIN = Path(__file__).resolve().parents[1] / "docs" / "results" / "benchmark" / "plain-recipe"


def _plain() -> dict:
    return {"summary": json.loads((PLAIN / "summary.json").read_text()),
            "arms": [json.loads(p.read_text()) for p in sorted((PLAIN / "arms").glob("*.json"))]}


def test_the_plain_recipe_misses_what_issue_14_found() -> None:
    t = check_targets(**_plain())
    assert not t["no_loss"]["met"]
    assert t["no_loss"]["first_count_minus_baseline"]["top-k"] < -0.5  # 0.073 against 0.636
    assert t["no_loss"]["worst_round_loss"]["worst_loss"] > 0.4
    assert t["half_gap"]["met"] and t["half_gap"]["best"] == "stochastic-batch"
    assert 0.7 < t["half_gap"]["share_closed"]["stochastic-batch"] < 0.9  # (0.808 - 0.636) / (0.855 - 0.636)
    assert not t["beats_random"]["met"]  # both intervals below or across zero
    assert t["sb_vs_topk"]["met"]
    assert "pooled" not in t  # that run had no pooled reference


def test_pooled_references_are_compared_per_strategy(tmp_path: Path) -> None:
    results = _plain()
    centres = results["summary"]["external_centres"]
    for arm in results["arms"]:
        if arm["kind"] == "strategy":
            arm["pooled"] = {c: arm["dice"]["10"][c] + (0.05 if arm["selection"] == "top-k" else 0.01) for c in centres}
    t = check_targets(**results)
    assert t["pooled"]["by_strategy"]["top-k"]["difference"] == -0.05
    assert t["pooled"]["by_strategy"]["random"]["difference"] == -0.01
    assert not t["pooled"]["met"]
    fixed = copy.deepcopy(results)
    for arm in fixed["arms"]:
        if arm.get("selection") == "top-k":
            arm["pooled"] = dict(arm["dice"]["10"])
    assert check_targets(**fixed)["pooled"]["met"]
    (tmp_path / "results.json").write_text(json.dumps({"arms": results["arms"]}))
    (tmp_path / "summary.json").write_text(json.dumps(results["summary"]))
    main([str(tmp_path)])
    assert json.loads((tmp_path / "targets.json").read_text())["pooled"]["met"] is False
