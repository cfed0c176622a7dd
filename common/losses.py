"""Segmentation training losses by name: the one place their names live (TrainConfig.loss).
Each entry builds a loss over logits (B, C, H, W) and integer labels (B, 1, H, W)."""

from __future__ import annotations

from collections.abc import Callable

from monai.losses import DiceCELoss
from torch import nn

from ugafl.common.errors import ConfigError


def _dice_ce() -> nn.Module:
    """MONAI's Dice + cross-entropy, Dice per sample (nnU-Net's default)."""
    return DiceCELoss(to_onehot_y=True, softmax=True)


LOSSES: dict[str, Callable[[], nn.Module]] = {
    "dice-ce": _dice_ce,
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def make_loss(name: str) -> nn.Module:
    """The loss called `name`; ConfigError listing the known ones if there is none."""
    if name not in LOSSES:
        raise ConfigError(f"unknown training loss {name!r}; one of {', '.join(LOSS_NAMES)}")
    return LOSSES[name]()
