"""Whole-slide prediction: tissue patches streamed in batches through the model, softmax
probabilities stitched onto a slide-wide grid at the model's mpp with Gaussian weights so that
patch borders do not show. Memory: one float32 map of the slide at the model's mpp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from torch import nn
from tqdm.auto import tqdm

from ugafl.common.masks import MaskImage
from ugafl.common.model import ModelConfig, to_input
from ugafl.common.slide import Slide
from ugafl.common.streaming import iter_patch_batches
from ugafl.common.tiling import patch_grid
from ugafl.common.tissue import TissueMask, detect_tissue


@dataclass
class ProbabilityMap:
    """Tumour probability on the slide's grid at `mpp`: pixel (i, j) covers the level-0 box
    starting at (j, i) * mpp / slide_mpp. Pixels off tissue, or that no patch covered, are 0."""

    prob: np.ndarray  # float32 (H, W)
    mpp: float

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        return self.prob >= threshold


def grid_shape(slide: Slide, mpp: float) -> tuple[int, int]:
    """(rows, cols) of the whole slide at `mpp`."""
    w0, h0 = slide.dimensions
    return max(1, round(h0 * slide.mpp / mpp)), max(1, round(w0 * slide.mpp / mpp))


@torch.no_grad()
def predict_slide(model: nn.Module, cfg: ModelConfig, slide: Slide, tissue: TissueMask | None = None, batch_size: int = 16,
                  overlap: int = 32, min_tissue: float = 0.02, device: torch.device | str = "cpu", progress: bool = False) -> ProbabilityMap:
    """Predicts every tissue patch of `slide` and stitches the tumour probability."""
    tissue = tissue if tissue is not None else detect_tissue(slide)
    p = cfg.patch_size
    patches = patch_grid(slide, cfg.mpp, p, stride=p - overlap, tissue=tissue, min_tissue=min_tissue)
    rows, cols = grid_shape(slide, cfg.mpp)
    acc = np.zeros((rows + p, cols + p), np.float32)
    weight = np.zeros((rows + p, cols + p), np.float32)
    importance = compute_importance_map((p, p), mode="gaussian", sigma_scale=0.25).numpy().astype(np.float32)
    model.eval().to(device)
    scale = slide.mpp / cfg.mpp
    bar = tqdm(total=len(patches), desc=slide.path.name, unit="patch", disable=not progress, leave=False)
    for batch, locations in iter_patch_batches(slide, patches, cfg.mpp, p, batch_size=batch_size):
        with torch.autocast(torch.device(device).type, enabled=torch.device(device).type == "cuda"):
            logits = model(to_input(batch, device))
        prob = torch.softmax(logits[:, : cfg.num_classes].float(), dim=1)[:, 1].cpu().numpy()
        for loc, tile in zip(locations, prob):
            y, x = round(loc.y * scale), round(loc.x * scale)
            if y < 0 or x < 0:
                continue
            acc[y : y + p, x : x + p] += tile * importance
            weight[y : y + p, x : x + p] += importance
        bar.update(len(locations))
    bar.close()
    prob = np.divide(acc, weight, out=np.zeros_like(acc), where=weight > 0)[:rows, :cols]
    # Tumour only on tissue: glass inside a border patch is not metastasis, whatever the model says.
    on_tissue = MaskImage(tissue.mask, tissue.mpp).region((0, 0), slide.dimensions, slide.mpp, cfg.mpp)[:rows, :cols] > 0
    prob[: on_tissue.shape[0], : on_tissue.shape[1]] *= on_tissue
    return ProbabilityMap(prob=prob, mpp=cfg.mpp)
