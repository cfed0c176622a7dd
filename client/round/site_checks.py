"""What the coordinator's acceptance gate asks of a site, as pixel counts (scalars only): how a
model segments the site's held-out correction, or, at the central site, its validation patches.
Counts, not Dice, so that the coordinator can pool them over sites."""

from __future__ import annotations

import numpy as np
import torch

from ugafl.client.site_config import SiteConfig
from ugafl.common.central_bank import CentralConfig, build_bank
from ugafl.common.metrics import confusion
from ugafl.common.model import ModelConfig

BATCH = 8
VALIDATION_SEED = 1_000_003  # the central site's validation patches: a draw no training round uses
VALIDATION_PATCHES_PER_SLIDE = 16


@torch.no_grad()
def pixel_counts(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    """{prefix-tp, prefix-fp, prefix-fn}: the model's argmax against 0/1 `labels` (N, H, W) on
    uint8 `images` (N, H, W, 3), pooled over the patches."""
    device = next(model.parameters()).device
    model.eval()
    tp = fp = fn = 0
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(images[start:start + BATCH]).permute(0, 3, 1, 2).float().div(255).to(device)
        pred = model(x)[:, :2].argmax(1).cpu().numpy().astype(bool)
        c = confusion(pred, labels[start:start + BATCH].astype(bool))
        tp, fp, fn = tp + c.tp, fp + c.fp, fn + c.fn
    return {f"{prefix}-tp": float(tp), f"{prefix}-fp": float(fp), f"{prefix}-fn": float(fn)}



def central_validation_counts(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, prefix: str) -> dict[str, float]:
    """Pixel counts on the central site's validation patches: a fixed draw from its own labelled
    training slides (never a test slide), the same every round."""
    bank, _ = build_bank(site.central_data, cfg, CentralConfig(centre=site.central_centre,
                                                               patches_per_slide=VALIDATION_PATCHES_PER_SLIDE),
                         VALIDATION_SEED, progress=False)
    return pixel_counts(model, bank.images, bank.labels, prefix)
