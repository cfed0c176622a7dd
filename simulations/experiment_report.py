"""The benchmark's report: summary.json (baseline per centre, external_centres, test_slides per
centre and size class, arms -> stage -> mean/sd/seeds, vs_random and vs_null -> stage ->
diff/ci95, minutes), report.md (the tables) and three plots (Dice against corrected patches with
the null and oracle bands, per centre, per size class), all from the arms' per-slide test counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ugafl.common.atomic import atomic_write_text
from ugafl.common.config import RunConfig
from ugafl.simulations.experiment_stats import (SIZE_CLASSES, centre_dice, class_dice, mean_sd, negative_fp_mm2,
                                                paired_difference, slides_per_class)

REFERENCE_STYLE = {"null": ("grey", "null: no corrections"), "oracle": ("tab:green", "oracle: every patch corrected")}


def arm_key(result: dict, methods: int) -> str:
    """The arm's name in summary.json: the reference, or the selection (method/selection with several methods)."""
    kind = result.get("kind", "strategy")
    if kind != "strategy":
        return kind
    return result["selection"] if methods == 1 else f"{result['method']}/{result['selection']}"


def _by_arm(results: list[dict], methods: int) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in results:
        out.setdefault(arm_key(r, methods), {})[int(r["seed"])] = r
    return out


def _grid(runs: dict[int, dict], seeds: list[int], stage: str, external: list[str]) -> np.ndarray:
    """(seeds, centres) pooled Dice of one arm at one stage."""
    return np.array([[centre_dice(runs[s]["slides"][stage])[c] for c in external] for s in seeds])


def build_summary(results: list[dict], baseline_rows: list[dict], stages: list[str], central: str, mpp: float,
                  methods: int = 1, minutes: float | None = None) -> dict:
    """summary.json: baseline per centre, test slides per centre and size class, per arm and stage
    the external mean (mean ± sd over seeds), per size class and false-positive area on tumour-free
    slides, and each arm's paired difference to `random` and to `null` with a 95% bootstrap interval."""
    base = centre_dice(baseline_rows)
    external = [c for c in base if c != central]
    arms = _by_arm(results, methods)
    summary: dict = {"baseline": base, "baseline_external": float(np.mean([base[c] for c in external])),
                     "external_centres": external, "test_slides": slides_per_class(baseline_rows),
                     "baseline_size_classes": class_dice(baseline_rows, external),
                     "baseline_negative_fp_mm2": negative_fp_mm2(baseline_rows, external, mpp),
                     "arms": {}, "per_centre": {}, "size_classes": {}, "negative_fp_mm2": {}}
    for name, runs in arms.items():
        seeds = sorted(runs)
        summary["arms"][name], summary["per_centre"][name] = {}, {}
        summary["size_classes"][name], summary["negative_fp_mm2"][name] = {}, {}
        for stage in stages:
            grid = _grid(runs, seeds, stage, external)
            mean, sd = mean_sd(grid.mean(axis=1).tolist())
            summary["arms"][name][stage] = {"mean": mean, "sd": sd, "seeds": len(seeds)}
            summary["per_centre"][name][stage] = {c: dict(zip(("mean", "sd"), mean_sd(grid[:, k].tolist())))
                                                  for k, c in enumerate(external)}
            classes = [class_dice(runs[s]["slides"][stage], external) for s in seeds]
            summary["size_classes"][name][stage] = {
                size: (None if classes[0][size] is None else dict(zip(("mean", "sd"), mean_sd([c[size] for c in classes]))))
                for size in SIZE_CLASSES}
            fps = [negative_fp_mm2(runs[s]["slides"][stage], external, mpp) for s in seeds]
            summary["negative_fp_mm2"][name][stage] = None if fps[0] is None else float(np.mean(fps))
    for reference in ("random", "null"):
        if reference not in arms:
            continue
        table: dict = {}
        for name, runs in arms.items():
            seeds = sorted(set(runs) & set(arms[reference]))
            if name == reference or not seeds:
                continue
            table[name] = {}
            for stage in stages:
                diff, ci = paired_difference(_grid(runs, seeds, stage, external),
                                             _grid(arms[reference], seeds, stage, external))
                table[name][stage] = {"diff": diff, "ci95": list(ci), "seeds": len(seeds)}
        summary[f"vs_{reference}"] = table
    if minutes is not None:
        summary["minutes"] = round(minutes, 1)
    return summary


def report_markdown(summary: dict, stages: list[str]) -> str:
    """The tables of summary.json as Markdown."""
    ext = summary["external_centres"]
    lines = [f"Dice: mean of the external centres ({', '.join(ext)}), pooled over each centre's test slides; "
             "mean ± sd over seeds.", "",
             "| arm | seeds | " + " | ".join(f"+{s} patches" for s in stages) + " |",
             "|---|---|" + "---|" * len(stages),
             f"| central model (baseline) | - | " + " | ".join(f"{summary['baseline_external']:.3f}" for _ in stages) + " |"]
    for name, by_stage in summary["arms"].items():
        cells = [f"{by_stage[s]['mean']:.3f} ± {by_stage[s]['sd']:.3f}" for s in stages]
        lines.append(f"| {name} | {by_stage[stages[0]]['seeds']} | " + " | ".join(cells) + " |")
    for reference in ("random", "null"):
        table = summary.get(f"vs_{reference}")
        if not table:
            continue
        lines += ["", f"Paired difference to `{reference}` (same seeds; mean over seeds and centres, "
                  "95% bootstrap interval over seeds and centres):", "",
                  "| arm | " + " | ".join(f"+{s} patches" for s in stages) + " |", "|---|" + "---|" * len(stages)]
        for name, by_stage in table.items():
            cells = [f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" for d in (by_stage[s] for s in stages)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per centre (mean ± sd over seeds):", "",
              "| arm | stage | " + " | ".join(ext) + " |", "|---|---|" + "---|" * len(ext),
              "| central model | baseline | " + " | ".join(f"{summary['baseline'][c]:.3f}" for c in ext) + " |"]
    for name, by_stage in summary["per_centre"].items():
        for s in stages:
            lines.append(f"| {name} | +{s} | " + " | ".join(f"{by_stage[s][c]['mean']:.3f} ± {by_stage[s][c]['sd']:.3f}"
                                                            for c in ext) + " |")
    lines += ["", "Per size class, external centres pooled (Dice; on tumour-free slides 1.0 means no false "
              "positive at all), and the mean false-positive area per tumour-free slide:", "",
              "| arm | stage | " + " | ".join(SIZE_CLASSES) + " | FP mm² per negative slide |",
              "|---|---|" + "---|" * (len(SIZE_CLASSES) + 1)]

    def fmt(v) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else f"{v['mean']:.3f} ± {v['sd']:.3f}")

    fp = summary["baseline_negative_fp_mm2"]
    lines.append("| central model | baseline | " + " | ".join(fmt(summary["baseline_size_classes"][c]) for c in SIZE_CLASSES)
                 + f" | {'n/a' if fp is None else f'{fp:.3f}'} |")
    for name, by_stage in summary["size_classes"].items():
        for s in stages:
            fp = summary["negative_fp_mm2"][name][s]
            lines.append(f"| {name} | +{s} | " + " | ".join(fmt(by_stage[s][c]) for c in SIZE_CLASSES)
                         + f" | {'n/a' if fp is None else f'{fp:.3f}'} |")
    counts = summary["test_slides"]
    lines += ["", "Test slides per centre: " + "; ".join(
        f"{c}: " + ", ".join(f"{n} {k}" for k, n in by.items()) for c, by in counts.items()) + "."]
    return "\n".join(lines) + "\n"


def report_figures(summary: dict, stages: list[str], out_dir: Path) -> list[Path]:
    """dice_vs_patches.png (strategies with the null and oracle bands, mean ± sd over seeds),
    per_centre.png, size_classes.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0] + [int(s) for s in stages]
    base = summary["baseline_external"]
    strategies = [a for a in summary["arms"] if a not in REFERENCE_STYLE]
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for ref, (colour, label) in REFERENCE_STYLE.items():
        if ref in summary["arms"]:
            m = np.array([base] + [summary["arms"][ref][s]["mean"] for s in stages])
            sd = np.array([0.0] + [summary["arms"][ref][s]["sd"] for s in stages])
            ax.fill_between(xs, m - sd, m + sd, color=colour, alpha=0.25, lw=0)
            ax.plot(xs, m, color=colour, ls="--", label=label)
    for name in strategies:
        m = [base] + [summary["arms"][name][s]["mean"] for s in stages]
        sd = [0.0] + [summary["arms"][name][s]["sd"] for s in stages]
        ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=name)
    ax.axhline(base, color="k", lw=0.8, ls=":", label=f"central model {base:.3f}")
    ax.set_xticks(xs, ["central\nmodel"] + [f"round {k + 1}\n{s} patches" for k, s in enumerate(stages)])
    ax.set_xlabel("corrected patches per external centre (the references: after the same rounds)")
    ax.set_ylabel("Dice, mean of the external centres")
    ax.set_title("Dice against corrected patches (mean ± sd over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "dice_vs_patches.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    ext = summary["external_centres"]
    fig, axes = plt.subplots(1, len(ext), figsize=(3.2 * len(ext), 3.4), sharey=True, squeeze=False)
    for ax, centre in zip(axes[0], ext):
        for name in summary["arms"]:
            m = [summary["baseline"][centre]] + [summary["per_centre"][name][s][centre]["mean"] for s in stages]
            sd = [0.0] + [summary["per_centre"][name][s][centre]["sd"] for s in stages]
            colour, _ = REFERENCE_STYLE.get(name, (None, None))
            ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=name, color=colour,
                        ls="--" if name in REFERENCE_STYLE else "-")
        ax.set_title(centre, fontsize=10)
        ax.set_xticks(xs)
        ax.set_xlabel("corrected patches")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pooled Dice (test slides)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "per_centre.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    classes = [c for c in SIZE_CLASSES if summary["baseline_size_classes"][c] is not None]
    names = ["central model", *summary["arms"]]
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.6), sharey=True, squeeze=False)
    width = 0.8 / len(names)
    for ax, stage in zip(axes[0], stages):
        for k, name in enumerate(names):
            values = [summary["baseline_size_classes"][c] if name == "central model"
                      else (summary["size_classes"][name][stage][c] or {}).get("mean", np.nan) for c in classes]
            errs = [0.0 if name == "central model" else (summary["size_classes"][name][stage][c] or {}).get("sd", 0.0)
                    for c in classes]
            ax.bar(np.arange(len(classes)) + (k - (len(names) - 1) / 2) * width, values, width, yerr=errs,
                   capsize=2, label=name)
        ax.set_xticks(np.arange(len(classes)), classes)
        ax.set_title(f"+{stage} patches per centre", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("pooled Dice, external centres")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Dice per size class (negative: 1.0 = no false positive)", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "size_classes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(results: list[dict], baseline_rows: list[dict], exp, cfg: RunConfig, run_dir: Path,
                 minutes: float | None = None) -> dict:
    """summary.json, report.md and the plots under `run_dir`; returns the summary."""
    stages = [str(p) for p in exp.patches]
    complete = [r for r in results if "slides" in r]
    summary = build_summary(complete, baseline_rows, stages, cfg.central.centre, cfg.model.mpp, len(exp.methods), minutes)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(run_dir / "report.md", report_markdown(summary, stages))
    report_figures(summary, stages, run_dir)
    return summary
