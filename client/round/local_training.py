"""The train step of a round: fine-tune the global model on the site's corrected patches (a
central site: on its own labelled bank), on the site's device. Returns the weights and scalar
metrics; a site with nothing new since its last training returns no weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ugafl.client.queue.corrected import corrected_patches
from ugafl.client.round.records import FEDERATION_DIR
from ugafl.client.site_config import SiteConfig
from ugafl.common.atomic import atomic_write_text
from ugafl.common.central_bank import round_bank
from ugafl.common.model import ModelConfig
from ugafl.common.training import TrainConfig, train_segmentation
from ugafl.common.wire import unique_state

LOCAL_BATCH = 8  # crops per local step
LOCAL_CROP_PX = 128  # largest crop side, px at the model's mpp


def trained_on(workspace: Path) -> list[int]:
    """Ids of the corrected patches the last local training used."""
    path = workspace / FEDERATION_DIR / "trained_on.json"
    return json.loads(path.read_text()) if path.is_file() else []


def local_schedule(images: np.ndarray, steps: int, lr: float, seed: int, proximal_mu: float = 0.0) -> TrainConfig:
    """How a site fine-tunes on `images` (N, H, W, 3): batches of 8 crops of up to 128 px."""
    return TrainConfig(steps=steps, batch_size=LOCAL_BATCH, crop=min(LOCAL_CROP_PX, images.shape[1], images.shape[2]),
                       lr=lr, proximal_mu=proximal_mu, seed=seed)


def train(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, steps: int, proximal_mu: float, lr: float,
          seed: int) -> tuple[dict[str, torch.Tensor] | None, list[int], dict[str, float]]:
    """Fine-tune the global model on the site's corrected patches (a central site: on its own
    labelled data). (state dict, ids of the corrected patches used, metrics); the state is None
    when there is nothing new (unless the site retrains every round)."""
    if site.role == "central":
        bank = round_bank(site.central_data, cfg, site.central_centre, seed)
        images, labels, ids = bank.images, bank.labels, []
    else:
        images, labels, ids = corrected_patches(site.workspace)
    done_before = trained_on(site.workspace)
    if not site.train or (site.role != "central" and (not ids or (sorted(ids) == done_before and not site.retrain))):
        return None, [], {"num-examples": 0.0, "site-weight": 0.0, "new-corrections": 0.0}
    new = len(set(ids) - set(done_before))
    device = next(model.parameters()).device
    reference = {k: v.detach().clone() for k, v in model.named_parameters()}
    started = time.perf_counter()
    losses = train_segmentation(model, images, labels, local_schedule(images, steps, lr, seed, proximal_mu),
                                device, progress=False, reference=reference, num_classes=cfg.num_classes)
    if ids:
        (site.workspace / FEDERATION_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_text(site.workspace / FEDERATION_DIR / "trained_on.json", json.dumps(sorted(ids)))
    return unique_state(model), ids, {"num-examples": float(len(images)), "site-weight": 1.0,
                                      "new-corrections": float(new), "loss": float(np.mean(losses[-10:])),
                                      "seconds": time.perf_counter() - started}
