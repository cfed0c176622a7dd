"""Server-side checks on the model updates sites send, before any is averaged in: the right
array names, shapes and dtypes, only finite values, and a change from the global model whose
size is in line with the rest of the round. A refused update is logged with the site's node id
and left out; the round goes on with the others.

"Size" is the L2 norm of (update - global) over all floating-point arrays. An update is an
outlier when its norm is more than `norm_factor` times the median norm of the *other* updates of
the round (leave-one-out, so with two sites each is compared with the other). Rounds with a
single update skip the norm check (nothing to compare with).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ugafl.common.log import get_logger

log = get_logger("update_checks")

DEFAULT_NORM_FACTOR = 10.0


@dataclass(frozen=True)
class Verdict:
    node_id: int
    accepted: bool
    reason: str  # "" when accepted
    delta_norm: float  # NaN when not computable


def check_arrays(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> str:
    """'' when `update` has exactly the reference's names, shapes and dtypes and only finite
    values; else the first problem, in words."""
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else [])
        return "wrong keys: " + "; ".join(parts)
    for name, ref in reference.items():
        got = np.asarray(update[name])
        if got.shape != ref.shape:
            return f"wrong shape for {name}: {got.shape}, expected {ref.shape}"
        if got.dtype != ref.dtype:
            return f"wrong dtype for {name}: {got.dtype}, expected {ref.dtype}"
        if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
            bad = int((~np.isfinite(got)).sum())
            return f"{bad} NaN or infinite value(s) in {name}"
    return ""


def delta_norm(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of update - reference over the floating-point arrays (float64 accumulation)."""
    total = 0.0
    for name, ref in reference.items():
        if np.issubdtype(ref.dtype, np.floating):
            diff = np.asarray(update[name], np.float64) - np.asarray(ref, np.float64)
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def check_round(updates: Mapping[int, Mapping[str, np.ndarray]], reference: Mapping[str, np.ndarray],
                norm_factor: float = DEFAULT_NORM_FACTOR) -> list[Verdict]:
    """A verdict per node id, in node order; every refusal is logged with the node id."""
    verdicts: dict[int, Verdict] = {}
    norms: dict[int, float] = {}
    for node_id in sorted(updates):
        problem = check_arrays(updates[node_id], reference)
        if problem:
            verdicts[node_id] = Verdict(node_id, False, problem, math.nan)
        else:
            norms[node_id] = delta_norm(updates[node_id], reference)
    for node_id, norm in norms.items():
        others = [n for k, n in norms.items() if k != node_id]
        if others:
            typical = float(np.median(others))
            if norm > norm_factor * max(typical, 1e-12):
                verdicts[node_id] = Verdict(node_id, False, f"update norm {norm:.4g} is more than {norm_factor:g}x the "
                                                            f"median of the round's other updates ({typical:.4g})", norm)
                continue
        verdicts[node_id] = Verdict(node_id, True, "", norm)
    result = [verdicts[k] for k in sorted(verdicts)]
    for v in result:
        if not v.accepted:
            log.warning("refused the update of node %d: %s", v.node_id, v.reason)
    return result
