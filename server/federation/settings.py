"""A federated run's settings (the Flower run config, `[federation]` of the config files)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ugafl.common.errors import ConfigError
from ugafl.common.selection import SELECTION_NAMES
from ugafl.server.federation.aggregation import AGGREGATION_NAMES, WEIGHTINGS


@dataclass(frozen=True)
class FederationSettings:
    """Run settings; Flower run config keys are these names with '-' for '_'."""

    central_checkpoint: str
    out_dir: str
    signing_key: str
    num_rounds: int = 3
    aggregation: str = "fedavg"  # see aggregation.AGGREGATIONS
    proximal_mu: float = 0.0  # fedprox (and sent to sites as the proximal term)
    trim_beta: float = 0.2  # fedtrimmedavg: share cut at each end
    weighting: str = "sites"  # fedavg/fedprox weights: "sites" (one vote each) or "examples" (by example count)
    selection: str = "stochastic-batch"  # see common.selection.SELECTIONS
    budget: int = 5  # patches queued per site per round
    method: str = "tta"  # uncertainty method the sites use
    passes: int = 4
    local_steps: int = 100
    lr: float = 1e-3
    seed: int = 0
    min_nodes: int = 2
    norm_factor: float = 10.0
    eval_data: str = ""  # dataset folder for server-side evaluation ("" = none)
    eval_centres: str = "RUMC"  # comma-separated centres of eval_data to evaluate every round
    run_name: str = "federated"
    timeout_s: float = 3600.0

    @staticmethod
    def from_run_config(run_config: dict[str, Any]) -> FederationSettings:
        known = {f.name: f for f in fields(FederationSettings)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown run config key {key!r}; known: {', '.join(k.replace('_', '-') for k in known)}")
            kind = known[name].type
            try:
                values[name] = {"int": int, "float": float, "str": str}[kind](value)
            except (TypeError, ValueError):
                raise ConfigError(f"run config {key}: expected {kind}, got {value!r}") from None
        for required in ("central_checkpoint", "out_dir", "signing_key"):
            if not values.get(required):
                raise ConfigError(f"run config {required.replace('_', '-')} is required")
        settings = FederationSettings(**values)
        if settings.aggregation not in AGGREGATION_NAMES:
            raise ConfigError(f"run config aggregation: {settings.aggregation!r}; one of {', '.join(AGGREGATION_NAMES)}")
        if settings.selection not in SELECTION_NAMES:
            raise ConfigError(f"run config selection: {settings.selection!r}; one of {', '.join(SELECTION_NAMES)}")
        if settings.weighting not in WEIGHTINGS:
            raise ConfigError(f"run config weighting: {settings.weighting!r}; one of {', '.join(WEIGHTINGS)}")
        if settings.num_rounds < 1 or settings.budget < 1 or settings.local_steps < 1:
            raise ConfigError("run config num-rounds, budget and local-steps must be at least 1")
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
