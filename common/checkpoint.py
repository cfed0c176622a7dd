"""Model checkpoints that describe themselves: architecture, training config, a summary of the
training data and a content hash. They load with `torch.load(weights_only=True)`: plain types and
tensors only, so no training-code globals are needed (or executed) to read one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ugafl.common.atomic import atomic_write
from ugafl.common.errors import CheckpointError, ConfigError
from ugafl.common.model import ModelConfig, build_model

CHECKPOINT_FORMAT = "ugafl-checkpoint/1"


def content_hash(state_dict: dict[str, torch.Tensor], model_config: ModelConfig | dict) -> str:
    """SHA-256 over the architecture (the config as stored in the file) and every tensor's name,
    dtype, shape and bytes. Hashing the stored dict keeps old checkpoints valid when a config field
    with a default is added later."""
    stored = model_config.to_dict() if isinstance(model_config, ModelConfig) else model_config
    digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class Checkpoint:
    model: nn.Module
    model_config: ModelConfig
    content_hash: str
    meta: dict  # train_config, data_summary, created, extra


def save_checkpoint(path: str | Path, model: nn.Module, model_config: ModelConfig, train_config: dict | None = None,
                    data_summary: dict | None = None, extra: dict | None = None) -> str:
    """Writes the checkpoint atomically (temp file then rename); returns its content hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    digest = content_hash(state, model_config)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model_config.to_dict(),
        "train_config": json.loads(json.dumps(train_config or {})),
        "data_summary": json.loads(json.dumps(data_summary or {})),
        "extra": json.loads(json.dumps(extra or {})),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "content_hash": digest,
        "state_dict": state,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return digest


def _unreadable(error: Exception, path: Path) -> str:
    """Why torch.load failed, in a few words (never torch's advice to load with weights_only=False,
    which would run whatever code the file holds)."""
    text = str(error)
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # what torch.save writes is a zip archive
            return "not a PyTorch file"
    if "Weights only load failed" in text or type(error).__name__ == "UnpicklingError":
        return "it holds Python objects besides tensors and plain data, which ugafl never loads"
    if "zip archive" in text or "central directory" in text or isinstance(error, (EOFError, OSError)):
        return "truncated or damaged"
    first = (text.splitlines() or [""])[0]
    return f"{type(error).__name__}: {first if len(first) <= 160 else first[:157].rsplit(' ', 1)[0] + '...'}"


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Loads and verifies a checkpoint; CheckpointError names the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({_unreadable(error, path)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a ugafl checkpoint (expected format {CHECKPOINT_FORMAT!r}; "
                              "`ugafl export` turns one into TorchScript, ONNX or a MONAI bundle)")
    raw_config, state = payload.get("model_config"), payload.get("state_dict")
    if not isinstance(raw_config, dict):
        raise CheckpointError(f"{path}: model_config is {'missing' if raw_config is None else 'not a table'}; "
                              "the file is damaged or was not written by ugafl")
    try:
        model_config = ModelConfig.from_dict(raw_config, at=f"{path} model_config")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: state_dict is {'missing' if state is None else 'not a table of tensors'}; "
                              "the file is damaged or was not written by ugafl")
    digest = content_hash(state, raw_config)
    if digest != payload.get("content_hash"):
        raise CheckpointError(f"{path}: content hash mismatch: the weights or config were altered after saving")
    try:
        model = build_model(model_config)
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the {model_config.arch} architecture: {str(error).splitlines()[0]}") from None
    meta = {k: payload.get(k) for k in ("train_config", "data_summary", "extra", "created")}
    return Checkpoint(model=model.to(device).eval(), model_config=model_config, content_hash=digest, meta=meta)
