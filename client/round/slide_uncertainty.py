"""Uncertainty for a site's slides: per slide a heatmap a pathologist can read, the predicted
tumour mask, the patch table (level-0 location, mpp, scores) and summary numbers; the patch table
also lands in the site workspace (patch_scores/) where selection reads it. A slide that can't be
read is recorded with its reason and the others go on."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ugafl.common.atomic import atomic_write_text
from ugafl.common.errors import SlideError
from ugafl.common.heatmap import HeatmapLayers, HeatmapStyle, resample_to_grid, slide_heatmap, summary_numbers
from ugafl.common.log import get_logger
from ugafl.common.masks import write_mask
from ugafl.common.overlay import OverlayWriter, overlay_scale
from ugafl.common.patch_scoring import PATCH_SCORING_NAMES, score_column
from ugafl.common.slide import open_slide
from ugafl.common.slide_files import is_slide_folder
from ugafl.common.slide_scan import candidate_files
from ugafl.common.correction_patch import patch_px
from ugafl.common.uncertainty_engine import SlideUncertainty, slide_uncertainty
from ugafl.common.uncertainty_measures import default_measure
from ugafl.common.uncertainty_methods import UncertaintyMethod

log = get_logger("uncertainty")
MEASURE_LABELS = {"entropy": "predictive entropy H(p̄) (nats)", "mutual_information": "mutual information (nats)",
                  "uga": "UGA score mean CE(p̄, p_m) (nats)", "variance": "predicted raters' variance"}
THUMB_MPP = 8.0


def primary_measure(method: UncertaintyMethod) -> str:
    """The measure shown and ranked by default (see `default_measure`)."""
    return default_measure(method.name)


@dataclass
class SlideResult:
    path: Path
    out_dir: Path | None
    patches: int
    summary: dict
    error: str | None = None


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["x", "y", "width", "height", "mpp"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _finite(value):
    """JSON has no NaN: not-a-number becomes null."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps({k: _finite(v) for k, v in payload.items()}, indent=1))


def slide_outputs(result: SlideUncertainty, slide_path: Path, thumbnail: np.ndarray, thumb_mpp: float, measure: str,
                  out_dir: Path) -> dict:
    """Writes heatmap.png, predicted_mask.tif, patches.csv and summary.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    uncertainty = result.maps.get(measure, np.zeros_like(result.prediction, np.float32))
    tissue_grid = resample_to_grid(result.tissue.mask, result.tissue.mpp, result.map_mpp, uncertainty.shape) >= 0.5
    numbers = summary_numbers(uncertainty, result.map_mpp, tissue_grid, result.prediction)
    scores = result.scores.get(measure, np.zeros(0))
    summary = {"slide": slide_path.name, "method": result.method, "measure": measure, "mpp": result.mpp,
               "map_mpp": result.map_mpp, "patches": len(result.patches),
               "mean_patch_score": float(np.nanmean(scores)) if len(scores) else None,
               "max_patch_score": float(np.nanmax(scores)) if len(scores) else None, **numbers,
               "compute_s": round(result.timing.compute_s, 2), "wall_s": round(result.timing.wall_s, 2)}
    shown = {"patches scored": str(len(result.patches)),
             "mean uncertainty on tissue": f"{numbers['mean_uncertainty']:.4f}",
             "90th percentile on tissue": f"{numbers['p90_uncertainty']:.4f}",
             "predicted tumour": f"{numbers['tumour_mm2']:.2f} mm² ({100 * np.nan_to_num(numbers['tumour_share_of_tissue']):.1f}% of tissue)"}
    layers = HeatmapLayers(thumbnail, thumb_mpp, uncertainty, result.map_mpp, result.tissue.mask, result.tissue.mpp,
                           result.prediction)
    style = HeatmapStyle(MEASURE_LABELS.get(measure, measure), f"{slide_path.name} · {result.method}", summary=shown)
    slide_heatmap(out_dir / "heatmap.png", layers, style)
    write_mask(out_dir / "predicted_mask.tif", result.prediction, result.map_mpp)
    _write_csv(out_dir / "patches.csv", result.rows())
    _write_json(out_dir / "summary.json", summary)
    return summary


def _has_every_scoring(table: Path, measure: str) -> bool:
    """Whether a patch table exists with a column for `measure` under every patch scoring (tables
    written before a scoring was added are computed again)."""
    if not table.is_file():
        return False
    with table.open(newline="") as handle:
        header = next(csv.reader(handle), [])
    return all(score_column(measure, name) in header for name in PATCH_SCORING_NAMES)


def run_uncertainty(target: str | Path, method: UncertaintyMethod, out: str | Path, workspace: str | Path | None = None,
                    mpp: float | None = None, batch_size: int = 16, device: torch.device | str = "cpu",
                    progress: bool = True, reuse: bool = False, patch_um: float | None = None,
                    write_overlays: bool = True) -> list[SlideResult]:
    """Uncertainty for one slide or every slide in a folder, scored per square patch `patch_um` µm
    wide (default: the model's patch size); outputs under OUT/<slide stem>/.
    With `reuse`, a slide whose outputs in OUT are complete and newer than the slide file is not
    computed again (OUT must then be specific to the model and method, as the site's are). With
    `write_overlays`, the predicted tumour and the uncertainty also land beside them as pyramidal
    TIFFs in the slide's frame (tumour_overlay.tif, uncertainty_overlay.tif; common.overlay)."""
    target, out = Path(target), Path(out)
    paths = candidate_files(target) if target.is_dir() and not is_slide_folder(target) else [target]
    measure = primary_measure(method)
    size = None if patch_um is None else patch_px(patch_um, method.cfg.mpp)
    results = []
    for path in paths:
        done = out / path.stem / "summary.json"
        if reuse and done.is_file() and _has_every_scoring(out / path.stem / "patches.csv", measure) and \
                done.stat().st_mtime >= path.stat().st_mtime:
            summary = json.loads(done.read_text())
            if workspace is not None:
                scores_dir = Path(workspace) / "patch_scores"
                scores_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(scores_dir / f"{path.stem}.{method.name}.csv", (out / path.stem / "patches.csv").read_text())
            log.info("%s: uncertainty already computed with this model (%s)", path.name, out.name)
            results.append(SlideResult(path, out / path.stem, int(summary.get("patches", 0)), summary))
            continue
        out_dir = out / path.stem
        overlays = None
        try:
            with open_slide(path, mpp) as slide:
                if write_overlays:
                    overlays = OverlayWriter(slide, method.cfg.mpp, size or method.cfg.patch_size, measure,
                                             overlay_scale(measure), out_dir)
                result = slide_uncertainty(method, slide, batch_size=batch_size, device=device, progress=progress,
                                            patch_px=size, sinks=(overlays.add,) if overlays else ())
                thumbnail, thumb_mpp = slide.thumbnail(THUMB_MPP)
        except SlideError as error:
            if overlays is not None:
                overlays.discard()
            log.warning("%s", error)
            results.append(SlideResult(path, None, 0, {}, str(error)))
            continue
        try:
            if overlays is not None:
                overlays.close()
            summary = slide_outputs(result, path, thumbnail, thumb_mpp, measure, out_dir)
        except (OSError, ValueError) as error:  # e.g. a full disk: record it, go on with the others
            log.exception("%s: writing outputs failed", path)
            results.append(SlideResult(path, None, 0, {}, f"{path}: writing outputs to {out_dir} failed: {error}"))
            continue
        if workspace is not None:
            scores_dir = Path(workspace) / "patch_scores"
            scores_dir.mkdir(parents=True, exist_ok=True)
            _write_csv(scores_dir / f"{path.stem}.{method.name}.csv", result.rows())
        results.append(SlideResult(path, out_dir, len(result.patches), summary))
    return results
