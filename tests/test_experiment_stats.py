"""The benchmark's statistics and summary.json from hand-made per-slide counts: pooled Dice per
centre and size class, false positives on tumour-free slides, paired differences with a bootstrap
interval, and the summary's shape (docs/results/benchmark/README.md)."""

from __future__ import annotations

import numpy as np
import pytest

from ugafl.simulations.experiment_report import build_summary, report_markdown
from ugafl.simulations.experiment_stats import (class_dice, negative_fp_mm2, paired_difference, pooled_dice,
                                                slides_per_class)


def row(centre: str, kind: str, tp: int, fp: int, fn: int) -> dict:
    return {"slide_id": f"{centre}_{kind}", "centre": centre, "label_type": kind, "tp": tp, "fp": fp, "fn": fn}


def slides(quality: float) -> list[dict]:
    """Two external centres A and B and the central C; `quality` scales the true positives."""
    out = []
    for centre in ("C", "A", "B"):
        q = 1.0 if centre == "C" else quality
        out += [row(centre, "macro", int(900 * q), 100, int(900 * (1 - q)) + 10),
                row(centre, "micro", int(90 * q), 10, int(90 * (1 - q)) + 5),
                row(centre, "itc", int(9 * q), 5, 2), row(centre, "negative", 0, int(50 * (1 - q)), 0)]
    return out


def test_pooled_dice_sums_counts_over_slides_and_classes_split_them() -> None:
    rows = [row("A", "macro", 80, 10, 10), row("A", "negative", 0, 20, 0)]
    assert pooled_dice(rows) == pytest.approx(160 / (160 + 30 + 10))  # the negative slide's FP counts
    assert pooled_dice([row("A", "negative", 0, 0, 0)]) == 1.0
    classes = class_dice(rows, ["A"])
    assert classes["macro"] == pytest.approx(160 / 180) and classes["negative"] == 0.0
    assert classes["itc"] is None and class_dice(rows, ["B"])["macro"] is None
    assert negative_fp_mm2(rows, ["A"], mpp=2.0) == pytest.approx(20 * 4e-6)
    assert slides_per_class(rows) == {"A": {"negative": 1, "itc": 0, "micro": 0, "macro": 1}}


def test_paired_difference_is_the_mean_with_an_interval_over_seeds_and_centres() -> None:
    a = np.array([[0.7, 0.6], [0.8, 0.5], [0.75, 0.65]])
    diff, (lo, hi) = paired_difference(a, a - 0.05)
    assert diff == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    rng = np.random.default_rng(1)
    noisy = a + rng.normal(0, 0.05, a.shape)
    diff, (lo, hi) = paired_difference(noisy, a)
    assert lo < diff < hi and diff == pytest.approx(float((noisy - a).mean()))
    assert paired_difference(noisy, a) == paired_difference(noisy, a)  # seeded
    with pytest.raises(ValueError, match="seeds, centres"):
        paired_difference(np.zeros(3), np.zeros(3))


def test_summary_has_every_arm_at_every_stage_and_the_differences_to_random_and_null() -> None:
    results = []
    for seed in range(3):
        for kind, selection, q5, q10 in [("null", "random", 0.5, 0.5), ("oracle", "random", 0.9, 0.92),
                                         ("strategy", "random", 0.55, 0.6), ("strategy", "top-k", 0.6, 0.7)]:
            q = 0.01 * seed
            results.append({"arm": f"{kind}-{selection}-s{seed}", "kind": kind, "method": "tta", "selection": selection,
                            "seed": seed, "slides": {"5": slides(q5 + q), "10": slides(q10 + q)}})
    summary = build_summary(results, slides(0.5), ["5", "10"], "C", mpp=2.0, minutes=12.34)
    assert summary["external_centres"] == ["A", "B"] and summary["minutes"] == 12.3
    assert summary["test_slides"]["A"] == {"negative": 1, "itc": 1, "micro": 1, "macro": 1}
    assert set(summary["arms"]) == {"null", "oracle", "random", "top-k"}
    for arm in summary["arms"].values():
        assert set(arm) == {"5", "10"} and all(arm[s]["seeds"] == 3 for s in arm)
    assert summary["arms"]["null"]["5"]["mean"] == pytest.approx(summary["baseline_external"], abs=0.02)
    assert summary["arms"]["oracle"]["10"]["mean"] > summary["arms"]["top-k"]["10"]["mean"] > summary["arms"]["random"]["10"]["mean"]
    top = summary["vs_random"]["top-k"]["10"]
    assert top["diff"] > 0 and top["ci95"][0] <= top["diff"] <= top["ci95"][1]
    assert "random" not in summary["vs_random"] and "null" not in summary["vs_null"]
    assert summary["vs_null"]["random"]["5"]["diff"] > 0
    text = report_markdown(summary, ["5", "10"])
    assert "| oracle | 3 |" in text and "Paired difference to `null`" in text and "| top-k | +10 |" in text
