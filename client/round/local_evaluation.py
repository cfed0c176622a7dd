"""The evaluate step of a round: how the global model does on the site's own labelled data."""

from __future__ import annotations

import torch

from ugafl.client.queue.corrected import corrected_patches
from ugafl.client.site_config import SiteConfig
from ugafl.common.metrics import confusion

BATCH = 8


@torch.no_grad()
def evaluate(site: SiteConfig, model: torch.nn.Module) -> dict[str, float]:
    """Pooled Dice of the model on the site's corrected patches (its labelled data)."""
    images, labels, _ = corrected_patches(site.workspace)
    if not len(images):
        return {"num-examples": 0.0, "site-weight": 0.0}
    device = next(model.parameters()).device
    tp = fp = fn = 0
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(images[start:start + BATCH]).permute(0, 3, 1, 2).float().div(255).to(device)
        pred = model(x)[:, :2].argmax(1).cpu().numpy().astype(bool)
        c = confusion(pred, labels[start:start + BATCH].astype(bool))
        tp, fp, fn = tp + c.tp, fp + c.fp, fn + c.fn
    dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return {"num-examples": float(len(images)), "site-weight": 1.0, "dice": float(dice)}
