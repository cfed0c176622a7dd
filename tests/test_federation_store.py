"""The coordinator's run folder: settings from a Flower run config, signed round checkpoints, and
resuming after the newest valid one (tampered, unsigned or broken ones are passed over)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.errors import ConfigError
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.signing import generate_signing_key, read_signature
from ugafl.server.federation.settings import FederationSettings
from ugafl.server.federation.checkpoints import RoundStore, round_path

CFG = ModelConfig(channels=(4, 8))


@pytest.fixture
def settings(tmp_path: Path) -> FederationSettings:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "central.pt", build_model(CFG), CFG)
    generate_signing_key(tmp_path / "key", tmp_path / "key.pub")
    return FederationSettings.from_run_config({"central-checkpoint": str(tmp_path / "central.pt"),
                                               "out-dir": str(tmp_path / "out"), "signing-key": str(tmp_path / "key"),
                                               "num-rounds": 3, "budget": 4})


def test_run_config_is_parsed_and_checked(settings: FederationSettings) -> None:
    assert settings.num_rounds == 3 and settings.budget == 4 and settings.aggregation == "fedavg"
    base = {"central-checkpoint": "c", "out-dir": "o", "signing-key": "k"}
    with pytest.raises(ConfigError, match=r"^run config rounds: unknown key \(did you mean num_rounds\?\)"):
        FederationSettings.from_run_config({**base, "rounds": 3})
    with pytest.raises(ConfigError, match="^run config num-rounds: expected an integer, got 'three'$"):
        FederationSettings.from_run_config({**base, "num-rounds": "three"})
    with pytest.raises(ConfigError, match="^run config aggregation: expected one of fedavg, .*, got 'krum'$"):
        FederationSettings.from_run_config({**base, "aggregation": "krum"})
    with pytest.raises(ConfigError, match="^run config signing_key: is required$"):
        FederationSettings.from_run_config({"central-checkpoint": "c", "out-dir": "o"})


def shifted(state: dict, by: float) -> dict:
    return {k: (v + by) if v.is_floating_point() else v for k, v in state.items()}


def test_a_new_run_starts_from_the_central_model_and_resumes_after_the_newest_valid_round(settings) -> None:
    store = RoundStore(settings)
    done, state, cfg = store.start()
    assert done == 0 and cfg == CFG and round_path(settings.out_dir, 0).is_file()
    assert read_signature(round_path(settings.out_dir, 0))["statement"]["round"] == 0
    store.append_metrics({"round": 0})
    for r in (1, 2):
        path, signed = store.save(shifted(state, r), cfg, r, {"loss": r})
        store.append_metrics({"round": r, "x": r})
        store.commit(path, signed)
    store.save(shifted(state, 3), cfg, 3, {})  # round 3 written but interrupted before its commit
    store.append_metrics({"round": 3})

    done, resumed, _ = RoundStore(settings).start()  # a restarted server
    assert [int(r["round"]) for r in RoundStore(settings).read_metrics()] == [0, 1, 2]  # round 3's row dropped
    assert done == 2 and torch.equal(resumed[next(iter(resumed))], shifted(state, 2)[next(iter(state))])

    # Round 2's weights altered after signing: passed over, resume after round 1.
    ckpt = torch.load(round_path(settings.out_dir, 2), weights_only=True)
    sig = Path(str(round_path(settings.out_dir, 2)) + ".sig").read_text()
    store.save(shifted(state, 9), cfg, 2, {})
    Path(str(round_path(settings.out_dir, 2)) + ".sig").write_text(sig)  # the old signature put back
    done, _, _ = RoundStore(settings).start()
    assert done == 1 and [int(r["round"]) for r in RoundStore(settings).read_metrics()] == [0, 1]
    del ckpt

    # Unsigned (signature removed) and truncated files are passed over too.
    Path(str(round_path(settings.out_dir, 1)) + ".sig").unlink()
    round_path(settings.out_dir, 3).write_bytes(b"truncated")
    assert RoundStore(settings).start()[0] == 0
