"""Pictures people would rather look at than read: one slide per centre with its tumour
outlined, and Dice per centre."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
import numpy as np  # noqa: E402
from skimage.measure import find_contours  # noqa: E402

from ugafl.common.manifest import Manifest, SlideRecord  # noqa: E402
from ugafl.common.masks import load_mask  # noqa: E402
from ugafl.common.slide import open_slide  # noqa: E402

THUMB_MPP = 8.0


def _outline(ax, mask: np.ndarray, scale: float, colour: str, label: str | None = None) -> None:
    """Every contour of MASK as one artist: a barely trained model's speckled mask has 10^5 of
    them, and one ax.plot each took minutes."""
    contours = [c[:, ::-1] * scale for c in find_contours(mask.astype(np.float32), 0.5)]  # (x, y)
    if contours:
        ax.add_collection(LineCollection(contours, colors=colour, linewidths=1.2, label=label, capstyle="projecting",
                                         joinstyle="round"), autolim=False)  # as ax.plot draws


def centre_gallery(manifest: Manifest, out: str | Path, records: list[SlideRecord] | None = None,
                   predictions: dict[str, tuple[np.ndarray, float]] | None = None) -> Path:
    """One thumbnail per centre (its first tumour slide unless `records` are given) with the true
    tumour outlined in green and, if given, the model's prediction (bool mask, mpp) in yellow."""
    if records is None:
        records = []
        for centre in manifest.centres:
            slides = manifest.select(centre=centre)
            tumour = [s for s in slides if s.label_type == "macro"] or [s for s in slides if s.tumour_regions] or slides
            records.append(tumour[0])
    fig, axes = plt.subplots(1, len(records), figsize=(3.6 * len(records), 3.6), squeeze=False)
    for ax, rec in zip(axes[0], records):
        with open_slide(manifest.path_of(rec.path)) as slide:
            thumb, thumb_mpp = slide.thumbnail(THUMB_MPP)
        mask = load_mask(manifest.path_of(rec.mask))
        ax.imshow(thumb)
        _outline(ax, mask.array[::4, ::4], 4 * mask.mpp / thumb_mpp, "#00c853", "tumour (truth)")
        if predictions and rec.slide_id in predictions:
            pred, pred_mpp = predictions[rec.slide_id]
            _outline(ax, pred, pred_mpp / thumb_mpp, "#ffd600", "model")
        ax.set_title(f"{rec.centre} · {rec.slide_id} · {rec.label_type} ({rec.split})", fontsize=9)
        bar_px = 1000.0 / thumb_mpp  # 1 mm scale bar
        h = thumb.shape[0]
        ax.plot([10, 10 + bar_px], [h - 12, h - 12], color="black", linewidth=3)
        ax.text(10, h - 20, "1 mm", fontsize=7)
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def dice_per_centre(dice: dict[str, dict[str, float]], out: str | Path, title: str = "Dice per centre (pooled over test slides)") -> Path:
    """Grouped bars: for each centre, one bar per model (dice[model][centre])."""
    models = list(dice)
    centres = list(dict.fromkeys(c for m in models for c in dice[m]))
    x = np.arange(len(centres))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(1.3 * len(centres) + 2.5, 3.6))
    for i, model in enumerate(models):
        values = [dice[model].get(c, np.nan) for c in centres]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, centres)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def federated_figure(rounds_csv: str | Path, before: dict[str, float], after: dict[str, float], out: str | Path) -> Path:
    """Left: Dice per centre before and after the federated rounds. Right: per round, the
    server-side Dice on the central validation slides and the sites' Dice on their corrected
    patches, with the number of corrected patches."""
    import csv

    rows = list(csv.DictReader(Path(rounds_csv).open()))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.3, 1]})
    centres = list(before)
    x = np.arange(len(centres))
    for i, (label, dice) in enumerate((("central model", before), ("after federated rounds", after))):
        bars = left.bar(x + (i - 0.5) * 0.38, [dice.get(c, np.nan) for c in centres], 0.38, label=label)
        left.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    left.set_xticks(x, centres)
    left.set_ylim(0, 1.05)
    left.set_ylabel("Dice (test slides)")
    left.set_title("Dice per centre", fontsize=10)
    left.legend(fontsize=8, loc="lower left")
    left.grid(axis="y", alpha=0.3)
    rounds = [int(r["round"]) for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]

    for key in [k for k in (rows[0] if rows else {}) if k.startswith("server-dice-")]:
        right.plot(rounds, series(key), "o-", label=f"server: {key[len('server-dice-'):]} validation")
    if rows and "sites-dice" in rows[0]:
        right.plot(rounds, series("sites-dice"), "s-", label="sites: Dice on their corrected patches")
    right.set_xlabel("round")
    right.set_xticks(rounds)
    right.set_ylabel("Dice")
    right.set_ylim(0, 1.05)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    right.set_title("per round", fontsize=10)
    if rows and "query-queue-corrected" in rows[0]:
        twin = right.twinx()
        twin.bar(rounds, series("query-queue-corrected"), alpha=0.15, color="grey")
        twin.set_ylabel("corrected patches (all sites)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
