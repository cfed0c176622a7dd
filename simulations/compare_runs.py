"""Two benchmark runs compared arm by arm on the same seeds: what a change to the federation (for
example central differential privacy, `simulations/configs/benchmark-dp.toml`) costs. For one
selection strategy, per count of corrected patches: each run's external mean Dice (mean ± sd over
the seeds both have) and the paired difference B - A over (seed, centre) cells with its 95%
two-way bootstrap interval (`experiment_stats.paired_difference`).

    python -m ugafl.simulations.compare_runs runs/benchmark runs/benchmark-dp --selection stochastic-batch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ugafl.common.errors import UgaflError
from ugafl.simulations.experiment_stats import mean_sd, paired_difference


def _strategy_arms(results: dict, selection: str, method: str) -> dict[int, dict]:
    return {a["seed"]: a for a in results["arms"]
            if a.get("kind") == "strategy" and a.get("selection") == selection and a.get("method") == method}


def compare(a: dict, b: dict, centres: list[str], selection: str, method: str = "tta") -> dict:
    """Per count: A's and B's external mean Dice and the paired difference B - A, on the seeds both
    ran (`a`, `b`: the runs' results.json)."""
    arms_a, arms_b = _strategy_arms(a, selection, method), _strategy_arms(b, selection, method)
    seeds = sorted(set(arms_a) & set(arms_b))
    if not seeds:
        raise UgaflError(f"no seed of {method} / {selection} is in both runs")
    out: dict = {"selection": selection, "method": method, "seeds": seeds, "counts": {}}
    for count in sorted({int(k) for s in seeds for k in arms_a[s]["dice"]} & {int(k) for s in seeds for k in arms_b[s]["dice"]}):
        grid_a = np.array([[arms_a[s]["dice"][str(count)][c] for c in centres] for s in seeds])
        grid_b = np.array([[arms_b[s]["dice"][str(count)][c] for c in centres] for s in seeds])
        diff, ci = paired_difference(grid_b, grid_a)
        out["counts"][str(count)] = {"a": mean_sd(grid_a.mean(axis=1).tolist()), "b": mean_sd(grid_b.mean(axis=1).tolist()),
                                     "b_minus_a": diff, "ci95": ci}
    return out


def markdown(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"{result['method']} / {result['selection']}, seeds {', '.join(map(str, result['seeds']))}: external mean Dice",
             "", f"| patches | {name_a} | {name_b} | {name_b} - {name_a} [95% CI] |", "|---|---|---|---|"]
    for count, r in result["counts"].items():
        (ma, sa), (mb, sb) = r["a"], r["b"]
        lo, hi = r["ci95"]
        lines.append(f"| +{count} | {ma:.3f} ± {sa:.3f} | {mb:.3f} ± {sb:.3f} | {r['b_minus_a']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--selection", default="stochastic-batch")
    parser.add_argument("--method", default="tta")
    args = parser.parse_args(argv)
    results = [json.loads((run / "results.json").read_text()) for run in (args.run_a, args.run_b)]
    centres = json.loads((args.run_a / "summary.json").read_text())["external_centres"]
    result = compare(*results, centres, args.selection, args.method)
    print(markdown(result, args.run_a.name, args.run_b.name))  # noqa: T201 - a command's output


if __name__ == "__main__":
    main()
