"""The segmentation training loop shared by central training and a site's fine-tuning: random
crops from a bank of patches, MONAI augmentation and a loss from common.losses (DiceCE by default), AdamW with a one-cycle schedule,
and an optional proximal term that keeps the weights near a reference (FedProx).

EDUE (a model with a disagreement head, given the raters' labels) is trained with
    L = DiceCE(logits[:, :C], y_r) + edue_weight * BCE(sigmoid(z), 4 q (1 - q))
where y_r is the label of one rater drawn uniformly per patch and step, z the extra output channel,
and q the share of raters who call the pixel tumour, so q (1 - q) is the raters' per-pixel
variance; the head predicts it as 0.25 * sigmoid(z). (A first version used MSE on the variance:
the target is zero almost everywhere, MSE's gradient vanished as the sigmoid saturated, and the
head's map correlated with the raters' disagreement at only 0.03-0.09.)"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import set_determinism
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ugafl.common.augment import training_transforms
from ugafl.common.log import get_logger
from ugafl.common.losses import LOSS_NAMES, make_loss

log = get_logger("training")


@dataclass(frozen=True)
class TrainConfig:
    """[train]: the schedule of the training loop (the pydantic constraints apply to config files)."""

    steps: Annotated[int, Field(ge=1)] = 1200
    batch_size: Annotated[int, Field(ge=1)] = 16
    crop: Annotated[int, Field(ge=1)] = 128  # px at the model's mpp
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    colour_augmentation: bool = True
    stain_augmentation: bool = False  # H&E stain jitter (common.stain)
    proximal_mu: Annotated[float, Field(ge=0)] = 0.0  # FedProx: mu/2 * ||w - w_ref||^2
    edue_weight: Annotated[float, Field(ge=0)] = 1.0  # weight of the disagreement-head loss (EDUE)
    loss: Literal[LOSS_NAMES] = "dice-ce"  # see common.losses.LOSSES
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _batch(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, transforms,
           raters: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    n, h, w = labels.shape
    idx = rng.integers(0, n, cfg.batch_size)
    ys = rng.integers(0, h - cfg.crop + 1, cfg.batch_size)
    xs = rng.integers(0, w - cfg.crop + 1, cfg.batch_size)
    xb, yb, vb = [], [], []
    for i, y, x in zip(idx, ys, xs):
        crop = (slice(y, y + cfg.crop), slice(x, x + cfg.crop))
        img = torch.from_numpy(images[i][crop]).permute(2, 0, 1).float() / 255.0
        sample = {"image": img}
        if raters is None:
            sample["label"] = torch.from_numpy(labels[i][crop][None].astype(np.float32))
        else:
            votes = raters[i][(slice(None),) + crop].astype(np.float32)  # (R, crop, crop)
            share = votes.mean(axis=0)
            sample["label"] = torch.from_numpy(votes[rng.integers(0, len(votes))][None])
            sample["variance"] = torch.from_numpy((share * (1 - share))[None])
        out = transforms(sample)
        xb.append(torch.as_tensor(out["image"]).clamp_(0, 1))
        yb.append(torch.as_tensor(out["label"]))
        if raters is not None:
            vb.append(torch.as_tensor(out["variance"]))
    return torch.stack(xb), torch.stack(yb).round().long(), (torch.stack(vb) if vb else None)


def train_segmentation(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                       device: torch.device | str = "cpu", progress: bool = True,
                       reference: dict[str, torch.Tensor] | None = None, raters: np.ndarray | None = None,
                       num_classes: int = 2) -> list[float]:
    """Trains `model` in place on uint8 images (N, H, W, 3) with 0/1 labels (N, H, W), both at
    the model's mpp. With `raters` (N, R, H, W) the model's extra output channel is trained as
    EDUE's disagreement head (see the module docstring). Returns the loss per step. Seeded."""
    if images.shape[1] < cfg.crop or images.shape[2] < cfg.crop:
        raise ValueError(f"patches of {images.shape[1:3]} px are smaller than the crop {cfg.crop}")
    set_determinism(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    transforms = training_transforms(cfg.colour_augmentation, cfg.stain_augmentation)
    transforms.set_random_state(seed=cfg.seed)
    device = torch.device(device)
    model.to(device).train()
    loss_fn = make_loss(cfg.loss)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    ref = {k: v.detach().to(device) for k, v in reference.items()} if reference and cfg.proximal_mu > 0 else None
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="training", unit="step", disable=not progress)
    for step in bar:
        x, y, v = _batch(rng, images, labels, cfg, transforms, raters)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out = model(x)
            loss = loss_fn(out[:, :num_classes], y)
            if v is not None:
                target = (4.0 * v[:, 0].to(device)).clamp_(0, 1)  # normalised raters' variance
                loss = loss + cfg.edue_weight * F.binary_cross_entropy_with_logits(out[:, num_classes].float(), target)
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
