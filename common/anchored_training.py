"""A site's local training, anchored to the global model so that a handful of corrected patches
cannot undo what it knew. Every step's batch mixes:

* corrected crops, each centred with probability `border_share` on the corrected tumour's border
  (the band where the mask changes) and otherwise on tissue of the patch, never on glass;
* anchor crops: the site's own unlabelled tissue, whose target is the global model's TTA mean
  (soft labels, made once per round before training; `client.round.anchor_bank`).

The loss is defined on crops without tumour (by default batch Dice + cross-entropy over soft
targets, `common.losses`), a proximal term mu/2 ||w - w_global||^2 keeps the weights near the
global model, and the learning rate decays from `lr` along a cosine (no warm-up to a peak). The
number of steps follows the data: `epochs` passes over the corrected area, at most `max_steps`.

The recipes' names live here (`LOCAL_TRAININGS`): "plain" is the previous fine-tuning on the
corrected patches alone (common.training), kept for the record and for the paper's configs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import set_determinism
from torch import nn

from ugafl.common.augment import training_transforms
from ugafl.common.log import get_logger
from ugafl.common.losses import make_loss
from ugafl.common.tissue import tissue_from_rgb

log = get_logger("anchored_training")

LOCAL_TRAININGS = ("anchored", "plain")
BORDER_PX = 6  # half-width of the tumour-border band, px at the model's mpp


@dataclass(frozen=True)
class AnchoredConfig:
    """How a site fine-tunes in a round (sent by the coordinator, see FederationSettings)."""

    epochs: float = 2.0  # passes over the corrected area per round
    max_steps: int = 100
    batch_size: int = 8  # crops per step, corrected and anchor together
    crop: int = 128  # crop side, px at the model's mpp
    anchor_share: float = 0.5  # share of each batch that is anchor crops (when the site has any)
    border_share: float = 0.5  # share of corrected crops centred on the tumour border (when there is one)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    proximal_mu: float = 0.0
    loss: str = "batch-dice-ce"
    colour_augmentation: bool = True
    stain_augmentation: bool = False  # H&E stain jitter (common.stain)
    seed: int = 0

    def anchors_per_step(self, have_anchors: bool) -> int:
        """Anchor crops in each batch: at least one corrected crop stays."""
        if not have_anchors:
            return 0
        return min(self.batch_size - 1, round(self.batch_size * self.anchor_share))

    def steps(self, patches: int, patch_px: int, have_anchors: bool = True) -> int:
        """Steps for `patches` corrected patches of `patch_px` px: `epochs` passes over their area
        in corrected crops, between 1 and `max_steps`."""
        per_step = self.batch_size - self.anchors_per_step(have_anchors)
        crops = patches * (patch_px / self.crop) ** 2
        return max(1, min(self.max_steps, math.ceil(self.epochs * crops / per_step)))


def border_band(mask: np.ndarray, half_width: int = BORDER_PX) -> np.ndarray:
    """Bool (H, W): pixels within `half_width` px of a change of the 0/1 `mask` (tumour border)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    k = 2 * half_width + 1
    dilated = F.max_pool2d(t, k, stride=1, padding=half_width)
    eroded = -F.max_pool2d(-t, k, stride=1, padding=half_width)
    return (dilated != eroded)[0, 0].numpy()


@dataclass
class _Centres:
    """Where corrected crops may be centred, per patch: flat pixel indices."""

    border: list[np.ndarray]
    tissue: list[np.ndarray]


def _centres(images: np.ndarray, masks: np.ndarray, mpp: float) -> _Centres:
    border, tissue = [], []
    for image, mask in zip(images, masks):
        tissue.append(np.flatnonzero(tissue_from_rgb(image, mpp) | (mask > 0)))
        border.append(np.flatnonzero(border_band(mask > 0)))
    return _Centres(border, tissue)


def _corner(flat: int, width: int, height: int, crop: int) -> tuple[int, int]:
    """(y, x) top-left of the crop centred on flat pixel index `flat`, moved inside the patch."""
    y, x = divmod(int(flat), width)
    return (int(np.clip(y - crop // 2, 0, height - crop)), int(np.clip(x - crop // 2, 0, width - crop)))


def _crop_sample(image: np.ndarray, tumour: np.ndarray, y: int, x: int, crop: int,
                 transforms) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented crop at (y, x) of `image` and its target (2, crop, crop) from the tumour
    probability (or 0/1 mask) `tumour`."""
    p = torch.from_numpy(tumour[y:y + crop, x:x + crop].astype(np.float32))[None]
    out = transforms({"image": torch.from_numpy(image[y:y + crop, x:x + crop]).permute(2, 0, 1).float() / 255.0,
                      "label": torch.cat([1 - p, p])})
    return torch.as_tensor(out["image"]).clamp_(0, 1), torch.as_tensor(out["label"])


def _batch(rng: np.random.Generator, images: np.ndarray, masks: np.ndarray, centres: _Centres, anchors: np.ndarray,
           anchor_probs: np.ndarray, n_anchor: int, cfg: AnchoredConfig, transforms) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, 3, c, c) in [0, 1], target (B, 2, c, c) class probabilities)."""
    c = cfg.crop
    xs, ys = [], []
    for _ in range(cfg.batch_size - n_anchor):
        i = int(rng.integers(len(images)))
        h, w = masks[i].shape
        pool = centres.border[i] if (len(centres.border[i]) and rng.random() < cfg.border_share) else centres.tissue[i]
        if len(pool):
            y, x = _corner(pool[rng.integers(len(pool))], w, h, c)
        else:
            y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        xb, yb = _crop_sample(images[i], masks[i], y, x, c, transforms)
        xs.append(xb)
        ys.append(yb)
    for _ in range(n_anchor):
        j = int(rng.integers(len(anchors)))
        h, w = anchor_probs[j].shape
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        xb, yb = _crop_sample(anchors[j], anchor_probs[j], y, x, c, transforms)
        xs.append(xb)
        ys.append(yb)
    return torch.stack(xs), torch.stack(ys).float()


def train_anchored(model: nn.Module, images: np.ndarray, masks: np.ndarray, anchors: np.ndarray,
                   anchor_probs: np.ndarray, cfg: AnchoredConfig, mpp: float, device: torch.device | str = "cpu",
                   reference: dict[str, torch.Tensor] | None = None, num_classes: int = 2) -> list[float]:
    """Fine-tunes `model` in place on corrected patches (uint8 images (N, P, P, 3), 0/1 masks
    (N, P, P), at the model's `mpp` µm/px) anchored by unlabelled crops (uint8 (K, A, A, 3), A >=
    crop; their soft targets `anchor_probs` float (K, A, A) in [0, 1]; K may be 0). `reference`:
    the global weights for the proximal term. Returns the loss per step. Seeded."""
    p = min(images.shape[1], images.shape[2])
    if p < cfg.crop:
        raise ValueError(f"corrected patches of {images.shape[1:3]} px are smaller than the crop {cfg.crop}")
    have_anchors = len(anchors) > 0
    if have_anchors and min(anchors.shape[1], anchors.shape[2]) < cfg.crop:
        raise ValueError(f"anchor crops of {anchors.shape[1:3]} px are smaller than the crop {cfg.crop}")
    n_anchor = cfg.anchors_per_step(have_anchors)
    steps = cfg.steps(len(images), p, have_anchors)
    set_determinism(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    transforms = training_transforms(cfg.colour_augmentation, cfg.stain_augmentation)
    transforms.set_random_state(seed=cfg.seed)
    centres = _centres(images, masks, mpp)
    device = torch.device(device)
    model.to(device).train()
    loss_fn = make_loss(cfg.loss)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    ref = {k: v.detach().to(device) for k, v in reference.items()} if reference and cfg.proximal_mu > 0 else None
    losses: list[float] = []
    for _ in range(steps):
        x, target = _batch(rng, images, masks, centres, anchors, anchor_probs, n_anchor, cfg, transforms)
        x, target = x.to(device), target.to(device)
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(x)
        if cfg.loss == "dice-ce":  # per-sample DiceCE takes integer labels: the soft targets rounded
            loss = loss_fn(out[:, :num_classes].float(), target.argmax(1, keepdim=True))
        else:
            loss = loss_fn(out[:, :num_classes].float(), target)
        if ref is not None:
            loss = loss + cfg.proximal_mu / 2 * sum(((w - ref[n]) ** 2).sum() for n, w in model.named_parameters()
                                                      if n in ref)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    log.info("anchored training: %d steps (%d corrected + %d anchor crops each), final loss %.3f", steps,
             cfg.batch_size - n_anchor, n_anchor, float(np.mean(losses[-10:])))
    return losses
