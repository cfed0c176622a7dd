"""Run configuration from TOML files: sections [data], [model], [train], [central], [evaluate], [federation]
map onto the dataclasses of the stages; unknown keys are refused, naming file and field."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ugafl.common.errors import ConfigError
from ugafl.common.model import ModelConfig
from ugafl.common.training import TrainConfig


@dataclass
class RunConfig:
    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    central: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    federation: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def build_section(cls, section: dict, where: str):
    """The dataclass `cls` from one config section; unknown keys are refused naming `where`."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it is missing or malformed."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def load_config(path: str | Path | None) -> RunConfig:
    """Reads a run config; None gives the defaults."""
    if path is None:
        return RunConfig(path=None)
    path = Path(path)
    raw = read_toml(path, "config file")
    allowed = {"data", "model", "train", "central", "evaluate", "federation", "experiment", "run"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(extra)}; known: {', '.join(sorted(allowed))}")
    model = ModelConfig.from_dict(raw.get("model", {})) if "model" in raw else ModelConfig()
    train = build_section(TrainConfig, raw.get("train", {}), f"{path} [train]")
    return RunConfig(path=path, data=raw.get("data", {}), model=model, train=train, central=raw.get("central", {}),
                     evaluate=raw.get("evaluate", {}), federation=raw.get("federation", {}), raw=raw)
