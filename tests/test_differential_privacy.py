"""Central differential privacy (issue 16: a privacy option a hospital may require): clipping and
noise with Flower's arithmetic (flwr's DifferentialPrivacyServerSideFixedClipping), applied by the
coordinator's aggregation, refused with a clear message where it cannot hold."""

from __future__ import annotations

import numpy as np
import pytest

from ugafl.common.errors import ConfigError
from ugafl.server.federation.privacy import add_noise, clip_update, noise_std
from ugafl.server.federation.rounds import aggregate
from ugafl.server.federation.settings import FederationSettings
from ugafl.server.federation.sites import Reply

REF = {"w": np.zeros((5, 4), np.float32), "b": np.ones(3, np.float32), "steps": np.array(7, np.int64)}


def settings(**extra) -> FederationSettings:
    return FederationSettings(central_checkpoint="-", out_dir="-", signing_key="-", **extra)


def test_clipping_and_the_noise_scale_are_flowers() -> None:
    from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv

    rng = np.random.default_rng(0)
    update = {"w": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
              "steps": np.array(9, np.int64)}
    ours = clip_update(update, REF, 0.5)
    theirs = [update["w"].copy(), update["b"].copy()]
    compute_clip_model_update(theirs, [REF["w"], REF["b"]], 0.5)
    np.testing.assert_allclose(ours["w"], theirs[0], rtol=1e-6)
    np.testing.assert_allclose(ours["b"], theirs[1], rtol=1e-6)
    assert ours["steps"] == 9  # integer buffers are not clipped
    delta = np.sqrt(sum(np.sum((ours[k] - REF[k]).astype(np.float64) ** 2) for k in ("w", "b")))
    assert delta == pytest.approx(0.5, rel=1e-5)
    small = {k: v + 0.001 if v.dtype == np.float32 else v for k, v in REF.items()}
    assert all(np.array_equal(clip_update(small, REF, 0.5)[k], small[k]) for k in REF)  # under the norm: unchanged
    assert noise_std(1.2, 0.5, 4) == compute_stdv(1.2, 0.5, 4) == pytest.approx(0.15)
    noisy = add_noise(REF, 0.15, np.random.default_rng(1))
    assert noisy["steps"] == 7 and np.std(noisy["w"] - REF["w"]) == pytest.approx(0.15, rel=0.5)


def test_the_coordinator_clips_every_vote_and_adds_the_noise_reproducibly() -> None:
    far = {"w": np.full((5, 4), 1.0, np.float32), "b": np.full(3, 2.0, np.float32), "steps": np.array(8, np.int64)}
    near = {"w": np.full((5, 4), 0.01, np.float32), "b": np.full(3, 1.01, np.float32), "steps": np.array(8, np.int64)}
    replies = [Reply(1, {"num-examples": 5.0}, far), Reply(2, {"num-examples": 5.0}, near),
               Reply(3, {"num-examples": 5.0}, near)]
    plain = aggregate(1, replies, REF, settings(norm_factor=1000.0)).arrays
    clipped = aggregate(1, replies, REF, settings(norm_factor=1000.0, dp_clip_norm=0.1)).arrays
    assert np.abs(clipped["w"]).max() < np.abs(plain["w"]).max() / 5  # the far update no longer dominates
    noisy = [aggregate(1, replies, REF, settings(norm_factor=1000.0, dp_clip_norm=0.1, dp_noise_multiplier=1.0)).arrays
             for _ in range(2)]
    assert np.array_equal(noisy[0]["w"], noisy[1]["w"])  # seeded by the run's seed and the round
    assert not np.array_equal(noisy[0]["w"], clipped["w"])


@pytest.mark.parametrize("extra, message", [
    (dict(dp_noise_multiplier=1.0), "dp_noise_multiplier: needs dp_clip_norm > 0"),
    (dict(dp_clip_norm=0.1, weighting="examples"), 'dp_clip_norm: needs weighting = "sites"'),
])
def test_settings_that_cannot_hold_together_are_refused(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FederationSettings.from_section({"central_checkpoint": "-", "out_dir": "-", "signing_key": "-", **extra},
                                        "coordinator.toml [federation]")
