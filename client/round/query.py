"""The query step of a round: score every slide in the site's inbox with the global model, queue
the next patches for correction, and hand them to the site's annotator. Only counts and score
summaries leave the site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ugafl.client.queue.fill import FillRequest, fill_queue
from ugafl.client.queue.store import CorrectionQueue
from ugafl.client.round.annotators import get_annotator
from ugafl.client.round.slide_uncertainty import run_uncertainty
from ugafl.client.site_config import SiteConfig
from ugafl.common.model import ModelConfig
from ugafl.common.correction_patch import CORRECTION_PATCH_UM
from ugafl.common.uncertainty_methods import method_from_models


def uncertainty_dir(workspace: Path, model_version: str, method: str, passes: int,
                    patch_um: float = CORRECTION_PATCH_UM) -> Path:
    """Where a model version's uncertainty outputs for patches `patch_um` µm wide live, per slide
    (shared with the inbox watcher, which precomputes them for new slides between rounds)."""
    return workspace / "uncertainty" / f"{model_version}.{method}x{passes}.{patch_um:g}um"


def query(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, model_version: str, round_: int,
          selection: str, budget: int, seed: int, method: str = "tta", passes: int = 4,
          patch_um: float = CORRECTION_PATCH_UM, scoring: str = "mean", tumour_reserve: float = 0.0) -> dict[str, float]:
    """Score every slide in the inbox with the global model per square patch `patch_um` µm wide,
    queue the next `budget` patches chosen by `selection` (patch scores by `scoring`; `tumour_reserve` of them
    where tumour is predicted), and let the site's annotator correct what it can now. Counts and score summaries."""
    device = next(model.parameters()).device
    method_obj = method_from_models(method, [model], cfg, device, passes)
    scores_dir = site.workspace / "patch_scores"
    for stale in scores_dir.glob(f"*.{method}.csv"):  # scores of the previous model
        stale.unlink()
    results = run_uncertainty(site.slides, method_obj, uncertainty_dir(site.workspace, model_version, method, passes, patch_um),
                              workspace=site.workspace, device=device, progress=False, reuse=True, patch_um=patch_um)
    request = FillRequest(selection, budget, seed + round_, model_version, round_, scoring=scoring,
                          tumour_reserve=tumour_reserve)
    ids = fill_queue(site.workspace, site.slides, method_obj, method, request,
                     device=device) if any(r.error is None and r.patches for r in results) else []
    with CorrectionQueue(site.workspace) as queue:
        chosen = [queue.get(i).score for i in ids]
    corrected_now = get_annotator(site.annotator)(site.workspace, site.annotator_data, seed + round_) if ids else 0
    with CorrectionQueue(site.workspace) as queue:
        counts = queue.counts()
    return {"slides-scored": float(sum(r.error is None for r in results)),
            "slides-failed": float(sum(r.error is not None for r in results)),
            "patches-scored": float(sum(r.patches for r in results)),
            "queued": float(len(ids)), "corrected-now": float(corrected_now),
            "score-mean": float(np.mean(chosen)) if chosen else 0.0,
            "score-max": float(np.max(chosen)) if chosen else 0.0,
            **{f"queue-{state.replace('_', '-')}": float(n) for state, n in counts.items()}}
