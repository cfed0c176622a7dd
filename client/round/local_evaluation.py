"""The evaluate step of a round: how the global model does on the site's own labelled data, and,
for the coordinator's gate, on the correction the site held out of training (or, at the central
site, on its validation patches)."""

from __future__ import annotations

import json

import torch

from ugafl.client.queue.corrected import corrected_patches
from ugafl.client.round.local_training import held_out_path
from ugafl.client.round.site_checks import central_validation_counts, pixel_counts
from ugafl.client.site_config import SiteConfig
from ugafl.common.model import ModelConfig


@torch.no_grad()
def evaluate(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, gate: bool = False) -> dict[str, float]:
    """Pooled Dice of the model on the site's corrected patches (its labelled data); with `gate`,
    pixel counts on the held-out correction (`gate-held-*`) or the central validation (`gate-val-*`)."""
    extra: dict[str, float] = {}
    if gate and site.role == "central":
        extra = central_validation_counts(site, model, cfg, "gate-val")
    images, labels, ids = corrected_patches(site.workspace)
    if gate and held_out_path(site.workspace).is_file():
        held = set(json.loads(held_out_path(site.workspace).read_text()))
        rows = [k for k, i in enumerate(ids) if i in held]
        if rows:
            extra.update(pixel_counts(model, images[rows], labels[rows], "gate-held"))
    if not len(images):
        return {"num-examples": 0.0, "site-weight": 0.0, **extra}
    c = pixel_counts(model, images, labels, "all")
    tp, fp, fn = c["all-tp"], c["all-fp"], c["all-fn"]
    dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return {"num-examples": float(len(images)), "site-weight": 1.0, "dice": float(dice), **extra}
