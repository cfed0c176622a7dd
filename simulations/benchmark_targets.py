"""Issue 15's targets, checked on a benchmark run (its report's `summary.json` and its arms'
results): does a corrected patch
reliably help? Every figure is the external mean Dice (the mean over the external centres).

* `no_loss`: no strategy's mean at the first count is below the baseline, and no arm's seed loses
  more than `max_round_loss` from one count to the next (the baseline counting as round 0);
* `half_gap`: at the last count the best uncertainty-guided strategy closes at least half of the
  gap between the baseline and `oracle`;
* `beats_random`: at the first count an uncertainty-guided strategy beats `random`, the 95%
  bootstrap interval of the paired difference above zero;
* `sb_vs_topk`: stochastic batches at least as good as top-k at the last count;
* `pooled`: at the last count each strategy is within `pooled_gap` of its pooled reference
  (the central model retrained on RUMC's data and the same corrections, not federated).

    python -m ugafl.simulations.benchmark_targets runs/benchmark   # prints, writes targets.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ugafl.common.atomic import atomic_write_text

GUIDED = ("top-k", "stochastic-batch")


def _external(dice: dict[str, float], centres: list[str]) -> float:
    return float(np.mean([dice[c] for c in centres]))


def check_targets(summary: dict, arms: list[dict], max_round_loss: float = 0.01, pooled_gap: float = 0.02) -> dict:
    """Each target: its figures and whether it holds (`met`); `summary` as the report's summary.json
    holds it, `arms` each arm's result.json."""
    centres, base = summary["external_centres"], summary["baseline_external"]
    counts = sorted({int(k) for a in arms for k in a["dice"]})
    first, last = str(counts[0]), str(counts[-1])
    means = {name: {k: v["mean"] for k, v in by.items()} for name, by in summary["arms"].items()}
    strategies = [s for s in means if s not in ("null", "oracle")]
    guided = [s for s in GUIDED if s in means]
    out: dict[str, dict] = {}

    losses = []
    for a in arms:
        series = [base] + [_external(a["dice"][str(c)], centres) for c in counts]
        worst = max(series[i] - series[i + 1] for i in range(len(series) - 1))
        losses.append({"arm": a["arm"], "worst_loss": round(worst, 4)})
    below = {s: round(means[s][first] - base, 4) for s in strategies}
    out["no_loss"] = {"first_count_minus_baseline": below, "worst_round_loss": max(losses, key=lambda x: x["worst_loss"]),
                      "arms_losing_more": [x for x in losses if x["worst_loss"] > max_round_loss],
                      "met": all(v >= 0 for v in below.values()) and all(x["worst_loss"] <= max_round_loss for x in losses)}

    if "oracle" in means and guided:
        gap = means["oracle"][last] - base
        closed = {s: round((means[s][last] - base) / gap, 3) if gap > 0 else None for s in guided}
        best = max(guided, key=lambda s: means[s][last])
        out["half_gap"] = {"baseline": round(base, 4), "oracle": round(means["oracle"][last], 4), "share_closed": closed,
                           "best": best, "met": bool(closed[best] is not None and closed[best] >= 0.5)}

    vs = summary.get("vs_random", {})
    paired = {s: vs[s][first] for s in guided if s in vs and first in vs[s]}
    if paired:
        out["beats_random"] = {"paired_difference": {s: {"diff": round(p["diff"], 4), "ci95": [round(x, 4) for x in p["ci95"]]}
                                                     for s, p in paired.items()},
                               "met": any(p["ci95"][0] > 0 for p in paired.values())}

    if all(s in means for s in GUIDED):
        out["sb_vs_topk"] = {"stochastic-batch": round(means["stochastic-batch"][last], 4),
                             "top-k": round(means["top-k"][last], 4),
                             "met": means["stochastic-batch"][last] >= means["top-k"][last]}

    pooled: dict[str, dict] = {}
    for s in strategies:
        pairs = [(_external(a["dice"][last], centres), _external(a["pooled"], centres))
                 for a in arms if a.get("selection") == s and a.get("kind") == "strategy" and "pooled" in a]
        if pairs:
            fed, ref = np.mean(pairs, axis=0)
            pooled[s] = {"federated": round(float(fed), 4), "pooled": round(float(ref), 4),
                         "difference": round(float(fed - ref), 4), "seeds": len(pairs)}
    if pooled:
        out["pooled"] = {"by_strategy": pooled, "met": all(abs(p["difference"]) <= pooled_gap for p in pooled.values())}
    return out


def markdown(targets: dict) -> str:
    """One line per target: met or missed, with its figures."""
    lines = []
    for name, t in targets.items():
        figures = {k: v for k, v in t.items() if k != "met"}
        lines.append(f"- **{name}**: {'met' if t['met'] else 'missed'}; {json.dumps(figures)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a benchmark run folder (summary.json and results.json)")
    args = parser.parse_args(argv)
    arms = json.loads((args.run_dir / "results.json").read_text())["arms"]
    targets = check_targets(json.loads((args.run_dir / "summary.json").read_text()), arms)
    atomic_write_text(args.run_dir / "targets.json", json.dumps(targets, indent=1))
    print(markdown(targets))  # noqa: T201 - a command's output


if __name__ == "__main__":
    main()
