"""Config files as typed, validated models, one spelling per key.

Every config file (the run configs `configs/*.toml` and `simulations/configs/*.toml`, a site's
`site.toml`, the coordinator's `coordinator.toml`) and the Flower run config are read through the
machinery here: a pydantic model per section (or a dataclass turned into one by `build_section`)
with unknown keys refused and no coercion ("3" is not an integer, `true` is not a number). What is
wrong becomes one ConfigError naming the file, the section and the key:

    configs/demo.toml [federation] local_steps: expected an integer, got 'many'

Keys are spelled with '_' in files; the Flower run config spells them with '-' (`local-steps`),
and `build_section(..., dashes=True)` takes either spelling as the same key.

The run config's sections: [data] (the synthetic data, validated by simulations), [model],
[train], [central], [evaluate], [federation] (validated by the federation's settings) and
[experiment] (simulations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from ugafl.common.central_bank import CentralConfig
from ugafl.common.config_base import (RULES, ConfigModel, FieldProblem, HostPort, NonEmpty, Port,  # noqa: F401
                                      build_section, one_of, read_sections, read_toml, section_model, validate,
                                      where)
from ugafl.common.model import ModelConfig
from ugafl.common.training import TrainConfig

T = TypeVar("T")

# ---------------------------------------------------------------------- the run config

RUN_SECTIONS = ("data", "model", "train", "central", "evaluate", "federation", "experiment")


@dataclass(frozen=True)
class EvaluateConfig:
    """[evaluate]: which split of the dataset the central model is scored on."""

    split: Literal["train", "test"] = "test"


@dataclass
class RunConfig:
    """A run config. [model], [train], [central] and [evaluate] are validated when the file is
    read; [data], [federation] and [experiment] belong to the simulations and the federation,
    which validate them with `section` (or FederationSettings) naming this file."""

    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    central: CentralConfig = field(default_factory=CentralConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    federation: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def where(self, section: str) -> str:
        """`FILE [section]`, for messages."""
        return where(self.path, section)

    def section(self, cls: type[T], name: str) -> T:
        """Section `name` ([data], [experiment]...) as the dataclass `cls`, validated."""
        values = getattr(self, name, None)
        if not isinstance(values, dict):
            values = self.raw.get(name, {})
        return build_section(cls, values, self.where(name))


def load_config(path: str | Path | None) -> RunConfig:
    """Reads a run config; None gives the defaults."""
    if path is None:
        return RunConfig(path=None)
    path = Path(path)
    raw = read_sections(path, "config file", RUN_SECTIONS)
    typed = {name: build_section(cls, raw.get(name, {}), where(path, name))
             for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("central", CentralConfig),
                               ("evaluate", EvaluateConfig))}
    return RunConfig(path=path, data=raw.get("data", {}), federation=raw.get("federation", {}), raw=raw, **typed)
