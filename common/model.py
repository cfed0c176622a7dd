"""The model factory: MONAI networks chosen by config. `unet` is the small CPU default,
`dynunet` the nnU-Net-like network for GPU sites. Inputs are RGB patches at `mpp` µm/px."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from ugafl.common.errors import ConfigError

ARCHITECTURES = ("unet", "dynunet")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and working resolution of a segmentation model (class 1 = tumour)."""

    arch: str = "unet"
    mpp: float = 2.0  # working resolution, µm/px
    patch_size: int = 256  # inference patch side, px at `mpp`
    in_channels: int = 3
    num_classes: int = 2
    dropout: float = 0.1
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)  # unet only
    dynunet_filters: tuple[int, ...] = (32, 64, 128, 256, 512, 512, 512)  # dynunet only
    disagreement_head: bool = False  # EDUE: one extra output channel predicting the raters' variance

    @property
    def out_channels(self) -> int:
        return self.num_classes + int(self.disagreement_head)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        cfg = cls(**values)
        if cfg.arch not in ARCHITECTURES:
            raise ConfigError(f"model config: arch {cfg.arch!r} is not one of {ARCHITECTURES}")
        if not 0.1 <= cfg.mpp <= 20:
            raise ConfigError(f"model config: mpp {cfg.mpp} µm/px is outside 0.1-20")
        return cfg


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh network for `cfg` (weights initialised by MONAI's defaults)."""
    if cfg.arch == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.out_channels, channels=cfg.channels,
                    strides=(2,) * (len(cfg.channels) - 1), num_res_units=2, dropout=cfg.dropout)
    if cfg.arch == "dynunet":
        from monai.networks.nets import DynUNet

        n = len(cfg.dynunet_filters)
        return DynUNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.out_channels, kernel_size=[3] * n,
                       strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1), filters=list(cfg.dynunet_filters),
                       norm_name="instance", dropout=cfg.dropout, res_block=True)
    raise ConfigError(f"model config: arch {cfg.arch!r} is not one of {ARCHITECTURES}")


def to_input(patches: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB patches -> float32 (B, 3, H, W) in [0, 1] on `device`."""
    tensor = torch.from_numpy(np.ascontiguousarray(patches)).to(device)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def pick_device(requested: str = "auto") -> torch.device:
    """`auto`: the GPU when present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
