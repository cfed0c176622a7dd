"""Model factory and checkpoints: round trip, self-description, tamper and corruption detection,
loading without project globals."""

import subprocess
import sys

import pytest
import torch

from ugafl.common.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ugafl.common.errors import CheckpointError, ConfigError
from ugafl.common.model import ModelConfig, build_model


@pytest.fixture()
def small_model():
    torch.manual_seed(0)
    cfg = ModelConfig(channels=(8, 16, 32), patch_size=64)
    return cfg, build_model(cfg).eval()


def test_round_trip_gives_identical_outputs_and_metadata(tmp_path, small_model):
    cfg, model = small_model
    path = tmp_path / "m.pt"
    digest = save_checkpoint(path, model, cfg, train_config={"steps": 3}, data_summary={"centre": "RUMC", "slides": ["a", "b"]})
    ckpt = load_checkpoint(path)
    assert ckpt.content_hash == digest
    assert ckpt.model_config == cfg
    assert ckpt.meta["train_config"] == {"steps": 3}
    assert ckpt.meta["data_summary"]["slides"] == ["a", "b"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ckpt.model(x))


def test_checkpoint_loads_with_plain_torch_in_a_fresh_interpreter(tmp_path, small_model):
    """weights_only=True refuses pickled classes: the file holds plain types and tensors only."""
    cfg, model = small_model
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cfg)
    code = ("import sys, torch; d = torch.load(sys.argv[1], weights_only=True); "
            "assert 'ugafl' not in sys.modules; print(d['format'], d['model_config']['arch'], len(d['state_dict']))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == CHECKPOINT_FORMAT and out[1] == "unet" and int(out[2]) == len(model.state_dict())


def test_tampered_weights_are_refused(tmp_path, small_model):
    cfg, model = small_model
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cfg)
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(path)


def test_truncated_missing_and_foreign_files_are_refused(tmp_path, small_model):
    cfg, model = small_model
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cfg)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable checkpoint \(truncated or damaged\)$"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "manifest.json").write_text('{"slides": []}')
    with pytest.raises(CheckpointError, match=r"manifest.json: not a readable checkpoint \(not a PyTorch file\)$"):
        load_checkpoint(tmp_path / "manifest.json")
    torch.save({"model": Exception("a pickled object")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"pickled.pt: .*Python objects besides tensors") as refused:
        load_checkpoint(tmp_path / "pickled.pt")
    assert "weights_only" not in str(refused.value)  # never torch's advice to load it with code execution on
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ugafl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_save_is_atomic_no_partial_file_left(tmp_path, small_model):
    cfg, model = small_model
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_dynunet_is_the_nnunet_like_configuration():
    cfg = ModelConfig(arch="dynunet")
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert 25e6 < n_params < 40e6  # (34.1 M)
    # The 7-stage, 32-512 filter network, seen in what each stage makes of a 128 px patch:
    # full resolution with 32 filters, then six halvings to 2 px with 64..512 filters.
    shapes = {}
    stages = [model.input_block, *model.downsamples, model.bottleneck]
    for k, stage in enumerate(stages):
        stage.register_forward_hook(lambda module, args, out, k=k: shapes.__setitem__(k, tuple(out.shape[1:])))
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 128, 128)).shape == (1, 2, 128, 128)
    assert [shapes[k] for k in range(len(stages))] == [
        (32, 128, 128), (64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_unet_default_is_small():
    model = build_model(ModelConfig())
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2.5e6


def test_model_config_refuses_unknown_fields_and_bad_values():
    with pytest.raises(ConfigError, match="^model config depth: unknown key"):
        ModelConfig.from_dict({"arch": "unet", "depth": 3})
    with pytest.raises(ConfigError, match="^model config arch: expected 'unet' or 'dynunet', got 'resnet'$"):
        ModelConfig.from_dict({"arch": "resnet"})
    with pytest.raises(ConfigError, match="^model config mpp: expected at most 20, got 50$"):
        ModelConfig.from_dict({"mpp": 50})
