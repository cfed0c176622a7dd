"""The segmentation training loop shared by central training and a site's fine-tuning: random
crops from a bank of patches, MONAI augmentation and DiceCE loss, AdamW with a cosine schedule,
and an optional proximal term that keeps the weights near a reference (FedProx)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.utils import set_determinism
from torch import nn
from tqdm.auto import tqdm

from ugafl.common.augment import training_transforms
from ugafl.common.log import get_logger

log = get_logger("training")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200
    batch_size: int = 16
    crop: int = 128  # px at the model's mpp
    lr: float = 2e-3
    weight_decay: float = 1e-4
    colour_augmentation: bool = True
    proximal_mu: float = 0.0  # FedProx: mu/2 * ||w - w_ref||^2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _batch(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, transforms) -> tuple[torch.Tensor, torch.Tensor]:
    n, h, w = labels.shape
    idx = rng.integers(0, n, cfg.batch_size)
    ys = rng.integers(0, h - cfg.crop + 1, cfg.batch_size)
    xs = rng.integers(0, w - cfg.crop + 1, cfg.batch_size)
    xb, yb = [], []
    for i, y, x in zip(idx, ys, xs):
        img = torch.from_numpy(images[i, y : y + cfg.crop, x : x + cfg.crop]).permute(2, 0, 1).float() / 255.0
        lab = torch.from_numpy(labels[i, y : y + cfg.crop, x : x + cfg.crop][None].astype(np.float32))
        out = transforms({"image": img, "label": lab})
        xb.append(torch.as_tensor(out["image"]).clamp_(0, 1))
        yb.append(torch.as_tensor(out["label"]))
    return torch.stack(xb), torch.stack(yb).round().long()


def train_segmentation(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                       device: torch.device | str = "cpu", progress: bool = True,
                       reference: dict[str, torch.Tensor] | None = None) -> list[float]:
    """Trains `model` in place on uint8 images (N, H, W, 3) with 0/1 labels (N, H, W), both at
    the model's mpp. Returns the loss per step. Seeded: the same inputs give the same model."""
    if images.shape[1] < cfg.crop or images.shape[2] < cfg.crop:
        raise ValueError(f"patches of {images.shape[1:3]} px are smaller than the crop {cfg.crop}")
    set_determinism(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    transforms = training_transforms(cfg.colour_augmentation)
    transforms.set_random_state(seed=cfg.seed)
    device = torch.device(device)
    model.to(device).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    ref = {k: v.detach().to(device) for k, v in reference.items()} if reference and cfg.proximal_mu > 0 else None
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="training", unit="step", disable=not progress)
    for step in bar:
        x, y = _batch(rng, images, labels, cfg, transforms)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = loss_fn(model(x), y)
        if ref is not None:
            loss = loss + cfg.proximal_mu / 2 * sum(((p - ref[n]) ** 2).sum() for n, p in model.named_parameters() if n in ref)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    log.info("trained %d steps; final loss %.3f", cfg.steps, float(np.mean(losses[-50:])))
    return losses
