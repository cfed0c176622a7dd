"""Does the uncertainty find the model's errors? Per method and centre, on tissue pixels of the
test slides: pixel-level AUROC of each measure for predicting the model's errors, Spearman
correlation of patch score with patch error fraction, ECE and NLL of p(tumour), and for EDUE the
correlation of its variance map with the simulated raters' disagreement. Streaming accumulators
keep memory bounded whatever the number of slides."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ugafl.common.manifest import load_manifest
from ugafl.common.masks import MaskImage, load_mask
from ugafl.common.slide import open_slide
from ugafl.common.tiling import patch_grid
from ugafl.common.tissue import detect_tissue
from ugafl.common.uncertainty_engine import iter_uncertainty
from ugafl.common.uncertainty_measures import patch_scores
from ugafl.common.uncertainty_methods import UncertaintyMethod
from ugafl.common.uncertainty_quality import BinnedAuroc, CalibrationAccumulator, pearson, spearman

LOG_RANGE = (-8.0, 1.0)  # AUROC bins over log10(score): keeps the order of tiny uncertainties
SAMPLE_PER_BATCH = 20_000  # pixels per batch kept for the EDUE-raters correlation


@dataclass
class _CentreStats:
    auroc: dict[str, BinnedAuroc] = field(default_factory=dict)
    patch_scores: dict[str, list[float]] = field(default_factory=dict)
    patch_errors: list[float] = field(default_factory=list)
    calibration: CalibrationAccumulator = field(default_factory=CalibrationAccumulator)
    variance: list[np.ndarray] = field(default_factory=list)
    rater_variance: list[np.ndarray] = field(default_factory=list)
    errors: int = 0


def _region(mask: MaskImage, loc, slide_mpp: float, mpp: float, size: int) -> np.ndarray:
    cover = mask.region((loc.x, loc.y), (loc.width, loc.height), slide_mpp, mpp)[:size, :size]
    return np.pad(cover, ((0, size - cover.shape[0]), (0, size - cover.shape[1])))


def method_quality(method: UncertaintyMethod, data_dir, split: str = "test", centres: list[str] | None = None,
                   device: torch.device | str = "cpu", progress: bool = True, seed: int = 0,
                   reference: str = "RUMC") -> list[dict]:
    """One row per centre, and one pooled over every centre but `reference` (the shifted ones)."""
    manifest = load_manifest(data_dir)
    cfg = method.cfg
    p = cfg.patch_size
    rng = np.random.default_rng(seed)
    stats: dict[str, _CentreStats] = {}
    records = [r for r in manifest.select(split=split) if centres is None or r.centre in centres]
    for rec in tqdm(records, desc=f"report {method.name}", unit="slide", disable=not progress):
        st = stats.setdefault(rec.centre, _CentreStats())
        truth_mask = load_mask(manifest.path_of(rec.mask))
        raters = [load_mask(manifest.path_of(r)) for r in rec.rater_masks] if method.name == "edue" else []
        with open_slide(manifest.path_of(rec.path)) as slide:
            tissue = detect_tissue(slide)
            patches = patch_grid(slide, cfg.mpp, p, tissue=tissue, min_tissue=0.1)
            for res in iter_uncertainty(method, slide, patches, tissue, device=device):
                truth = np.stack([_region(truth_mask, loc, slide.mpp, cfg.mpp, p) >= 0.5 for loc in res.locations])
                on = res.tissue
                error = ((res.prob >= 0.5) != truth) & on
                st.errors += int(error.sum())
                for name, values in res.maps.items():
                    acc = st.auroc.setdefault(name, BinnedAuroc(*LOG_RANGE, bins=8192))
                    acc.add(np.log10(np.maximum(values[on], 1e-12)), error[on])
                for name, values in patch_scores(res.maps, on).items():
                    st.patch_scores.setdefault(name, []).extend(values.tolist())
                st.patch_errors.extend((error.sum(axis=(1, 2)) / np.maximum(on.sum(axis=(1, 2)), 1)).tolist())
                st.calibration.add(res.prob[on], truth[on])
                if raters and "variance" in res.maps:
                    votes = np.stack([np.stack([_region(r, loc, slide.mpp, cfg.mpp, p) >= 0.5 for loc in res.locations]) for r in raters])
                    share = votes.mean(axis=0)
                    idx = np.flatnonzero(on)
                    idx = rng.choice(idx, min(len(idx), SAMPLE_PER_BATCH), replace=False) if len(idx) else idx
                    st.variance.append(res.maps["variance"].ravel()[idx])
                    st.rater_variance.append((share * (1 - share)).ravel()[idx])
    shifted = [c for c in stats if c != reference]
    if len(shifted) > 1:  # pooled over the shifted centres: the figure the targets speak of
        pooled = _CentreStats()
        for c in shifted:
            st = stats[c]
            for name, acc in st.auroc.items():
                pooled.auroc.setdefault(name, BinnedAuroc(*LOG_RANGE, bins=8192)).merge(acc)
            for name, values in st.patch_scores.items():
                pooled.patch_scores.setdefault(name, []).extend(values)
            pooled.patch_errors.extend(st.patch_errors)
            pooled.calibration.merge(st.calibration)
            pooled.variance += st.variance
            pooled.rater_variance += st.rater_variance
            pooled.errors += st.errors
        stats[f"shifted ({len(shifted)})"] = pooled
    rows = []
    for centre, st in stats.items():
        row = {"method": method.name, "centre": centre, "pixels": st.calibration.n, "patches": len(st.patch_errors),
               "error_rate": round(st.errors / max(st.calibration.n, 1), 4),
               "ece": round(st.calibration.ece(), 4), "nll": round(st.calibration.nll(), 4)}
        for name, acc in st.auroc.items():
            row[f"auroc_{name}"] = round(acc.value(), 4)
            row[f"spearman_{name}"] = round(spearman(np.array(st.patch_scores[name]), np.array(st.patch_errors)), 4)
        if st.variance:
            row["edue_rater_pearson"] = round(pearson(np.concatenate(st.variance), np.concatenate(st.rater_variance)), 4)
        rows.append(row)
    return rows


def format_report(rows: list[dict]) -> str:
    """Fixed-width table: one line per method, centre and measure."""
    lines = [f"{'method':<11} {'centre':<11} {'measure':<19} {'pixel AUROC':>11} {'patch Spearman':>14} {'ECE':>7} {'NLL':>7} {'error rate':>10} {'edue~raters':>11}"]
    for row in rows:
        measures = [k[len('auroc_'):] for k in row if k.startswith("auroc_")]
        for m in measures:
            rater = f"{row['edue_rater_pearson']:.3f}" if "edue_rater_pearson" in row and m == "variance" else ""
            lines.append(f"{row['method']:<11} {row['centre']:<11} {m:<19} {row['auroc_' + m]:>11.3f} {row['spearman_' + m]:>14.3f} "
                         f"{row['ece']:>7.4f} {row['nll']:>7.4f} {row['error_rate']:>10.4f} {rater:>11}")
    lines.append("")
    lines.append("pixel AUROC: uncertainty as a detector of the model's pixel errors (prediction p̄ >= 0.5 vs truth), tissue only; "
                 "patch Spearman: patch score (mean over tissue) vs the patch's error fraction; ECE (15 bins of p(tumour)) "
                 "and NLL (nats) of p̄ on tissue pixels; edue~raters: Pearson of EDUE's variance with the raters' variance.")
    return "\n".join(lines)
