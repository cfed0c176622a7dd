"""The global model a site receives: run only after a trusted coordinator's signature checks out
over exactly these weights and this architecture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import ConfigError
from ugafl.common.model import ModelConfig, build_model, pick_device
from ugafl.common.signing import load_public_key, verify_model
from ugafl.common.wire import load_unique_state


def global_model(site: SiteConfig, arrays: Mapping[str, np.ndarray], model_config: Mapping[str, Any], signature: Any,
                 what: str) -> tuple[torch.nn.Module, ModelConfig, dict]:
    """The model the coordinator sent, after checking that a trusted key signed exactly these
    weights and this architecture; (model on the site's device, its config, the signed statement)."""
    statement = verify_model(arrays, signature, [load_public_key(k) for k in site.trusted_keys], what)
    if statement.get("model_config") != dict(model_config):
        raise ConfigError(f"{what}: the architecture sent differs from the one the coordinator signed")
    cfg = ModelConfig.from_dict(dict(model_config))
    model = build_model(cfg)
    load_unique_state(model, arrays, what)
    return model.to(pick_device(site.device)).eval(), cfg, statement
