"""Central differential privacy with fixed clipping, Flower's way (flwr's
DifferentialPrivacyServerSideFixedClipping, arXiv:1710.06963) in plain numpy: each accepted
update's change from the global model is clipped to an L2 norm of at most `clip_norm`, and the
aggregate gets Gaussian noise of standard deviation noise_multiplier * clip_norm / n, n being the
number of votes averaged. Unlike Flower's, only floating-point arrays are clipped and noised
(integer buffers such as BatchNorm's step counter are left as they are)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ugafl.server.federation.update_checks import delta_norm

Arrays = Mapping[str, np.ndarray]


def _floating(arrays: Arrays) -> list[str]:
    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


def clip_update(update: Arrays, reference: Arrays, clip_norm: float) -> dict[str, np.ndarray]:
    """`update` with its change from `reference` scaled down to an L2 norm of at most `clip_norm`
    (over every floating-point array together)."""
    names = _floating(reference)
    deltas = {k: np.subtract(update[k], reference[k]) for k in names}
    norm = delta_norm(update, reference)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = {k: np.asarray(v).copy() for k, v in update.items()}
    for k in names:
        out[k] = (np.asarray(reference[k]) + deltas[k] * scale).astype(np.asarray(update[k]).dtype)
    return out


def noise_std(noise_multiplier: float, clip_norm: float, votes: int) -> float:
    """The Gaussian noise's standard deviation (Flower's compute_stdv)."""
    return float(noise_multiplier * clip_norm / votes)


def add_noise(arrays: Arrays, std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`arrays` with N(0, std²) noise added to every floating-point value."""
    out = {k: np.asarray(v).copy() for k, v in arrays.items()}
    for k in _floating(arrays):
        out[k] = out[k] + rng.normal(0.0, std, out[k].shape).astype(out[k].dtype)
    return out
