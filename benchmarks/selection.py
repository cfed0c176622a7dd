"""Speed of patch selection at site scale.

1,000,000 candidate patches on ~200 slides (a regular grid of 256 px boxes per slide, random
scores, 5 % without a score), each strategy at budget 10 and 100, and exclude() against 10,000
taken boxes (half of them offset by half a patch, so real overlap tests happen). Prints the
median of a few runs and its ratio to a 1 s target (ratio < 1: faster than the target).

    python benchmarks/selection.py [--candidates 1000000] [--slides 200] [--taken 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ugafl.common.selection import SELECTION_NAMES, Candidates, exclude, select

TARGET_S = 1.0
PATCH = 256


def make(n: int, slides: int, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    per = -(-n // slides)
    cols = int(np.ceil(np.sqrt(per)))
    i = np.arange(n)
    k = i // slides
    score = rng.random(n)
    score[rng.random(n) < 0.05] = np.nan
    return Candidates(i % slides, (k % cols) * PATCH, (k // cols) * PATCH, np.full(n, PATCH), np.full(n, PATCH), score)


def make_taken(c: Candidates, m: int, seed: int = 1) -> Candidates:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(c), m, replace=False)
    shift = np.where(np.arange(m) % 2 == 0, 0, PATCH // 2)
    return Candidates(c.slide[pick], c.x[pick] + shift, c.y[pick] + shift, c.width[pick], c.height[pick], np.zeros(m))


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--taken", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    c = make(args.candidates, args.slides)
    print(f"{len(c):,} candidates on {args.slides} slides, median of {args.runs} runs, target {TARGET_S:g} s")
    for budget in (10, 100):
        for strategy in SELECTION_NAMES:
            t = median_time(lambda: select(c, strategy, budget, seed=0), args.runs)
            print(f"  select {strategy:<17} B={budget:<4} {t * 1e3:8.1f} ms   ratio to target {t / TARGET_S:.3f}")
        t = median_time(lambda: select(c, "top-k", budget, seed=0, max_per_slide=1), args.runs)
        print(f"  select {'top-k cap 1/slide':<17} B={budget:<4} {t * 1e3:8.1f} ms   ratio to target {t / TARGET_S:.3f}")
    taken = make_taken(c, args.taken)
    kept = exclude(c, taken)
    t = median_time(lambda: exclude(c, taken), args.runs)
    print(f"  exclude vs {len(taken):,} taken      {t * 1e3:8.1f} ms   ratio to target {t / TARGET_S:.3f}"
          f"   ({len(c) - len(kept):,} dropped)")


if __name__ == "__main__":
    main()
