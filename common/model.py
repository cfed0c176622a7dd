"""The model factory: MONAI networks chosen by config. `unet` is the small CPU default,
`dynunet` the nnU-Net-like network for GPU sites. Inputs are RGB patches at `mpp` µm/px."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ugafl.common.errors import ConfigError

ARCHITECTURES = ("unet", "dynunet")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and working resolution of a segmentation model (class 1 = tumour)."""

    arch: Literal[ARCHITECTURES] = "unet"
    mpp: Annotated[float, Field(ge=0.1, le=20)] = 2.0  # working resolution, µm/px
    patch_size: Annotated[int, Field(ge=1)] = 256  # inference patch side, px at `mpp`
    in_channels: Annotated[int, Field(ge=1)] = 3
    num_classes: Annotated[int, Field(ge=2)] = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    channels: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=2)] = (16, 32, 64, 128, 256)  # unet only
    dynunet_filters: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=2)] = (
        32, 64, 128, 256, 512, 512, 512)  # dynunet only
    disagreement_head: bool = False  # EDUE: one extra output channel predicting the raters' variance
    # >1: an ensemble of this many networks carried as one model (MemberStack), as the paper's
    # nnU-Net folds: federated, each member is trained and averaged with its own name
    members: Annotated[int, Field(ge=1)] = 1

    @property
    def out_channels(self) -> int:
        return self.num_classes + int(self.disagreement_head)

    def to_dict(self) -> dict:
        """The stored form; `members` only when there are several, so that single-network configs
        (and the checkpoints, signatures and hashes made from them) stay as they were."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if out["members"] == 1:
            del out["members"]
        return out

    @classmethod
    def from_dict(cls, raw: dict, at: str = "model config") -> "ModelConfig":
        """A ModelConfig from its dict (a checkpoint's, a message's); ConfigError naming `at` and the key."""
        from ugafl.common.config import build_section

        return build_section(cls, raw, at)


class MemberStack(nn.Module):
    """An ensemble of networks of one architecture carried as one model. `forward` gives the log
    of the members' mean softmax over the classes, so argmax and softmax of it are the ensemble's;
    training and the ensemble uncertainty method work on `members` one by one."""

    def __init__(self, members: list[nn.Module], num_classes: int):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x)[:, : self.num_classes].float(), dim=1) for m in self.members])
        return torch.log(probs.mean(dim=0).clamp_min(1e-8))


def members_of(model: nn.Module) -> list[nn.Module]:
    """The networks a model is made of: a MemberStack's members, else the model itself."""
    return list(model.members) if isinstance(model, MemberStack) else [model]


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh network for `cfg` (weights initialised by MONAI's defaults); a MemberStack of
    `cfg.members` networks when there are several."""
    if cfg.members > 1:
        if cfg.disagreement_head:
            raise ConfigError("model config: an ensemble of members with a disagreement head is not supported")
        single = replace(cfg, members=1)
        return MemberStack([build_model(single) for _ in range(cfg.members)], cfg.num_classes)
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


DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def pick_device(requested: str = "auto", what: str = "device") -> torch.device:
    """`auto`: the GPU when present, else the CPU; `cpu`; `cuda` or `cuda:N`, which must exist.
    Anything else, or a GPU this machine does not have, is a ConfigError naming `what` (the CLI
    passes "--device", a config its file and key)."""
    name = str(requested).strip().lower() if isinstance(requested, (str, torch.device)) else None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name or "")
    if match is None:
        raise ConfigError(f"{what} {requested!r}: not a device; use one of {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", built without CUDA")
        raise ConfigError(f"{what} {requested!r}: no CUDA GPU is available here ({build}); use cpu or auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{what} {requested!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered from 0")
    return torch.device(name)
