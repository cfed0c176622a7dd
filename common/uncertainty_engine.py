"""Uncertainty over a whole slide: tissue patches stream from the reader threads (which run ahead)
through an uncertainty method in batches; each batch yields per-pixel measures and tissue masks.
`slide_uncertainty` turns the stream into a patch table and slide maps kept at a coarse `map_mpp`,
so memory is bounded by a thumbnail-sized grid, not by the slide."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ugafl.common.masks import MaskImage
from ugafl.common.model import ModelConfig, to_input
from ugafl.common.slide import Slide
from ugafl.common.streaming import iter_patch_batches
from ugafl.common.tiling import PatchLocation, patch_grid
from ugafl.common.tissue import TissueMask, detect_tissue
from ugafl.common.uncertainty_measures import compute_measures, patch_scores
from ugafl.common.uncertainty_methods import UncertaintyMethod


@dataclass
class BatchUncertainty:
    """One batch of patches at the model's mpp."""

    locations: list[PatchLocation]
    prob: np.ndarray  # (B, H, W) mean tumour probability p̄
    maps: dict[str, np.ndarray]  # measure -> (B, H, W): entropy, mutual_information, uga[, variance]
    tissue: np.ndarray  # (B, H, W) bool


@dataclass
class Timing:
    """Where the time went: model compute vs the whole (reading, waiting, bookkeeping)."""

    compute_s: float = 0.0
    wall_s: float = 0.0
    patches: int = 0


def iter_uncertainty(method: UncertaintyMethod, slide: Slide, patches: list[PatchLocation], tissue: TissueMask,
                     batch_size: int = 16, device: torch.device | str = "cpu", workers: int = 2,
                     timing: Timing | None = None, patch_px: int | None = None) -> Iterator[BatchUncertainty]:
    """Per-pixel uncertainty of every patch (`patch_px` px square at the model's mpp; default the
    model's patch size), batch by batch, in `patches` order."""
    cfg: ModelConfig = method.cfg
    p = patch_px or cfg.patch_size
    tissue_image = MaskImage(tissue.mask, tissue.mpp)
    started = time.perf_counter()
    for batch, locations in iter_patch_batches(slide, patches, cfg.mpp, p, batch_size=batch_size, workers=workers):
        x = to_input(batch, device)
        t0 = time.perf_counter()
        out = method(x)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if timing is not None:  # pure model compute: the method's forward passes only
            timing.compute_s += time.perf_counter() - t0
            timing.patches += len(locations)
        measures = compute_measures(out.probs)
        prob = out.probs.mean(dim=0)[:, 1]
        maps = {k: v.cpu().numpy() for k, v in measures.items()}
        if out.variance is not None:
            maps["variance"] = out.variance.cpu().numpy()
        on_tissue = np.stack([_fit(tissue_image.region((loc.x, loc.y), (loc.width, loc.height), slide.mpp, cfg.mpp), p) >= 0.5
                              for loc in locations])
        yield BatchUncertainty(locations, prob.cpu().numpy(), maps, on_tissue)
    if timing is not None:
        timing.wall_s += time.perf_counter() - started


def _fit(array: np.ndarray, size: int) -> np.ndarray:
    out = array[:size, :size]
    if out.shape != (size, size):
        out = np.pad(out, ((0, size - out.shape[0]), (0, size - out.shape[1])))
    return out


@dataclass
class SlideUncertainty:
    """Patch table and coarse slide maps of one slide."""

    method: str
    mpp: float  # the model's working resolution, µm/px
    map_mpp: float  # resolution of `maps` and `prediction`, µm/px (same origin as the slide)
    patches: list[PatchLocation]
    scores: dict[str, np.ndarray]  # score column (common.patch_scoring.score_column) -> (N,)
    tumour_fraction: np.ndarray  # (N,) share of the patch's tissue predicted tumour
    maps: dict[str, np.ndarray]  # measure -> (H, W) at map_mpp; NaN where no patch was computed
    prediction: np.ndarray  # (H, W) bool at map_mpp
    tissue: TissueMask
    timing: Timing = field(default_factory=Timing)

    def rows(self) -> list[dict]:
        """The patch table: level-0 location and size, mpp, tissue, scores (one dict per patch)."""
        out = []
        for i, loc in enumerate(self.patches):
            row = {"x": loc.x, "y": loc.y, "width": loc.width, "height": loc.height, "mpp": self.mpp,
                   "tissue_fraction": round(loc.tissue_fraction, 4), "tumour_fraction": round(float(self.tumour_fraction[i]), 4)}
            row.update({k: (None if np.isnan(v[i]) else round(float(v[i]), 6)) for k, v in self.scores.items()})
            out.append(row)
        return out


def slide_uncertainty(method: UncertaintyMethod, slide: Slide, tissue: TissueMask | None = None, batch_size: int = 16,
                      map_mpp: float = 8.0, min_tissue: float = 0.1, device: torch.device | str = "cpu",
                      progress: bool = False, patch_px: int | None = None) -> SlideUncertainty:
    """Every tissue patch of `slide` (non-overlapping grid of `patch_px` px squares at the model's
    mpp; default the model's patch size) scored by `method`."""
    cfg = method.cfg
    tissue = tissue if tissue is not None else detect_tissue(slide)
    p = patch_px or cfg.patch_size
    patches = patch_grid(slide, cfg.mpp, p, tissue=tissue, min_tissue=min_tissue)
    factor = max(1, round(map_mpp / cfg.mpp))  # model pixels per map pixel
    map_mpp = cfg.mpp * factor
    w0, h0 = slide.dimensions
    shape = (max(1, round(h0 * slide.mpp / map_mpp)), max(1, round(w0 * slide.mpp / map_mpp)))
    q = p // factor
    maps: dict[str, np.ndarray] = {}
    prediction = np.zeros((shape[0] + q, shape[1] + q), bool)
    scores: dict[str, list[np.ndarray]] = {}
    fractions: list[np.ndarray] = []
    timing = Timing()
    bar = tqdm(total=len(patches), desc=f"{method.name} {slide.path.name}", unit="patch", disable=not progress, leave=False)
    for res in iter_uncertainty(method, slide, patches, tissue, batch_size, device, timing=timing, patch_px=p):
        tumour = (res.prob >= 0.5) & res.tissue
        for name, values in patch_scores(res.maps, res.tissue, "all", tumour).items():
            scores.setdefault(name, []).append(values)
        fractions.append(tumour.sum(axis=(1, 2)) / np.maximum(res.tissue.sum(axis=(1, 2)), 1))
        # Tissue-weighted block means; NaN where a block has no tissue (the heatmap shows tissue only).
        weight = F.avg_pool2d(torch.from_numpy(res.tissue[:, None].astype(np.float32)), factor)[:, 0].numpy()
        pooled = {k: np.divide(F.avg_pool2d(torch.from_numpy((v * res.tissue)[:, None].astype(np.float32)), factor)[:, 0].numpy(),
                               weight, out=np.full_like(weight, np.nan), where=weight > 0)
                  for k, v in res.maps.items()}
        pooled_pred = F.avg_pool2d(torch.from_numpy(tumour[:, None].astype(np.float32)), factor)[:, 0].numpy() >= 0.5
        for i, loc in enumerate(res.locations):
            y, x = round(loc.y * slide.mpp / map_mpp), round(loc.x * slide.mpp / map_mpp)
            if y < 0 or x < 0:
                continue
            for name, grid in pooled.items():
                canvas = maps.setdefault(name, np.full((shape[0] + q, shape[1] + q), np.nan, np.float32))
                canvas[y : y + q, x : x + q] = grid[i]
            prediction[y : y + q, x : x + q] = pooled_pred[i]
        bar.update(len(res.locations))
    bar.close()
    return SlideUncertainty(
        method=method.name, mpp=cfg.mpp, map_mpp=map_mpp, patches=patches,
        scores={k: np.concatenate(v) for k, v in scores.items()},
        tumour_fraction=np.concatenate(fractions) if fractions else np.zeros(0),
        maps={k: v[: shape[0], : shape[1]] for k, v in maps.items()}, prediction=prediction[: shape[0], : shape[1]],
        tissue=tissue, timing=timing,
    )
