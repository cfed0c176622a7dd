"""The model on the wire: every tensor once (DynUNet names its blocks twice), and loading back
sets every alias; weights that do not fit are refused by name."""

from __future__ import annotations

import pytest
import torch

from ugafl.common.errors import UgaflError
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.wire import load_unique_state, unique_state


def test_dynunet_travels_once_and_loads_into_every_alias() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="dynunet"))
    wire = unique_state(model)
    params = sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for v in wire.values()) == params < sum(v.numel() for v in model.state_dict().values())
    torch.manual_seed(1)
    other = build_model(ModelConfig(arch="dynunet"))
    load_unique_state(other, {k: v.numpy() for k, v in wire.items()})
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name  # the aliases too


def test_unet_is_unchanged_and_bad_weights_are_refused() -> None:
    model = build_model(ModelConfig(channels=(4, 8)))
    wire = unique_state(model)
    assert list(wire) == list(model.state_dict())
    name = next(iter(wire))
    with pytest.raises(UgaflError, match="global weights: do not fit the architecture"):
        load_unique_state(model, {k: v for k, v in wire.items() if k != name}, "global weights")
    with pytest.raises(UgaflError, match=f"{name} has shape"):
        load_unique_state(model, {**wire, name: torch.zeros(1)}, "global weights")
