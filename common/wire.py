"""The model as it travels between coordinator and sites: its state dict with every tensor once.

MONAI's DynUNet registers its blocks under two names (`downsamples.0...` and
`skip_layers.downsample...`), so its state dict lists 34 M parameters as 68 M values; sending it
whole would double every message. Names here are the first name of each distinct tensor in
state-dict order; loading sets the aliases too, since they are the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ugafl.common.errors import UgaflError


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> CPU tensor, one entry per distinct tensor of the model's state."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().cpu()
    return out


def load_unique_state(model: nn.Module, arrays: Mapping[str, Any], what: str = "model weights") -> None:
    """Load `unique_state`-form weights (tensors or numpy arrays) into `model`; refuses missing or
    unexpected names and shapes that do not fit, naming `what`."""
    expected = unique_state(model)
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise UgaflError(f"{what}: do not fit the architecture (missing {missing[:3]}, unexpected {extra[:3]})")
    state = {k: torch.from_numpy(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise UgaflError(f"{what}: {name} has shape {tuple(value.shape)}, the architecture {tuple(expected[name].shape)}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise UgaflError(f"{what}: unexpected {result.unexpected_keys[:3]}")
