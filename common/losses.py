"""Segmentation training losses by name: the one place their names live (TrainConfig.loss, the
sites' `local_loss`). Each entry builds a loss over logits (B, C, H, W) and either integer labels
(B, 1, H, W) or class probabilities (B, C, H, W) (soft targets, e.g. a teacher model's)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from ugafl.common.errors import ConfigError


def _dice_ce() -> nn.Module:
    """MONAI's Dice + cross-entropy, Dice per sample (nnU-Net's default). Integer labels only."""
    return DiceCELoss(to_onehot_y=True, softmax=True)


class BatchDiceCE(nn.Module):
    """Cross-entropy + MONAI's soft Dice computed over the whole batch at once ("batch Dice"): a
    crop without tumour has no tumour term of its own that is constant or undefined, the batch's
    tumour pixels are pooled instead. Targets are integer labels or class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(softmax=True, batch=True, soft_label=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] == 1:  # integer labels -> one-hot
            target = F.one_hot(target[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        return F.cross_entropy(logits.float(), target.float()) + self.dice(logits.float(), target.float())


LOSSES: dict[str, Callable[[], nn.Module]] = {
    "dice-ce": _dice_ce,
    "batch-dice-ce": BatchDiceCE,
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def make_loss(name: str) -> nn.Module:
    """The loss called `name`; ConfigError listing the known ones if there is none."""
    if name not in LOSSES:
        raise ConfigError(f"unknown training loss {name!r}; one of {', '.join(LOSS_NAMES)}")
    return LOSSES[name]()
