"""Aggregation strategies: how the round's accepted updates become the next global model. Plain
numpy, the same arithmetic as Flower's strategies of the same names (so a run gives the same
model whichever engine carries the messages).

The coordinator, not the sites, decides each update's weight (`weighting`): "sites" gives each
site one vote, "examples" weighs by the example count the site reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class AggregationParams:
    """What the strategies may read besides the updates."""

    trim_beta: float = 0.2  # fedtrimmedavg: share cut at each end


def weighted_mean(updates: Sequence[Arrays], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Σ w_i / Σw · update_i per array, accumulated in update order in each array's own dtype (as
    Flower's FedAvg does)."""
    total = sum(weights)
    factors = [w / total for w in weights]
    out: dict[str, np.ndarray] = {}
    for update, factor in zip(updates, factors, strict=True):
        for key, value in update.items():
            if key not in out:
                out[key] = np.asarray(value) * factor
            else:
                out[key] += np.asarray(value) * factor
    return out


def _fedavg(updates: Sequence[Arrays], weights: Sequence[float], params: AggregationParams) -> dict[str, np.ndarray]:
    return weighted_mean(updates, weights)


def _median(updates: Sequence[Arrays], weights: Sequence[float], params: AggregationParams) -> dict[str, np.ndarray]:
    """Element-wise median (weights are not used)."""
    return {k: np.asarray(np.median(np.stack([u[k] for u in updates]), axis=0)) for k in updates[0]}


def trim_mean(stacked: np.ndarray, cut_fraction: float) -> np.ndarray:
    """Mean along axis 0 after cutting int(cut_fraction · n) values at each end."""
    if not 0.0 <= cut_fraction < 0.5:
        raise ValueError(f"trim_beta must be in [0, 0.5), got {cut_fraction}")
    n = stacked.shape[0]
    low = int(cut_fraction * n)
    high = n - low
    part = np.partition(stacked, (low, high - 1), axis=0)
    return np.mean(part[low:high], axis=0)


def _trimmed(updates: Sequence[Arrays], weights: Sequence[float], params: AggregationParams) -> dict[str, np.ndarray]:
    """Element-wise trimmed mean (weights are not used)."""
    return {k: np.asarray(trim_mean(np.stack([u[k] for u in updates]), params.trim_beta)) for k in updates[0]}


Aggregation = Callable[[Sequence[Arrays], Sequence[float], AggregationParams], dict[str, np.ndarray]]
AGGREGATIONS: dict[str, Aggregation] = {
    "fedavg": _fedavg,
    "fedprox": _fedavg,  # FedProx's difference is the sites' proximal term; the server averages as FedAvg
    "fedmedian": _median,
    "fedtrimmedavg": _trimmed,
}
"""The aggregation strategies by name: the one place their names live."""
AGGREGATION_NAMES: tuple[str, ...] = tuple(AGGREGATIONS)

WEIGHTINGS = {"examples": "num-examples", "sites": "site-weight"}  # -> the reply metric that weighs an update


def weighted_metrics(metrics: Sequence[Mapping[str, float]], weighting_key: str) -> dict[str, float]:
    """The weighted mean of every metric the replies share, the weighting metric itself left out."""
    if not metrics:
        return {}
    weights = [float(m.get(weighting_key, 0.0)) for m in metrics]
    total = sum(weights)
    if total <= 0:
        return {}
    factors = [w / total for w in weights]
    shared = [k for k in metrics[0] if k != weighting_key and all(k in m for m in metrics)]
    out: dict[str, float] = {}
    for m, factor in zip(metrics, factors):
        for k in shared:
            out[k] = out.get(k, 0.0) + float(m[k]) * factor
    return out
