"""An ensemble carried as one model (common.model.MemberStack), so that a federation can hold the
paper's M members as its global model: the members keep their own names (the average of a round is
member by member), the ensemble method scores with them from one model or one checkpoint, local
training trains every member, and central training writes the members and the stack of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.errors import ConfigError
from ugafl.common.model import MemberStack, ModelConfig, build_model, members_of
from ugafl.common.uncertainty_methods import Ensemble, load_method
from ugafl.common.wire import unique_state

CFG = ModelConfig(channels=(8, 16, 32), patch_size=64)


def test_a_stack_is_its_members_mean_and_keeps_each_members_weights_by_name(tmp_path: Path):
    torch.manual_seed(0)
    stack_cfg = ModelConfig(channels=(8, 16, 32), patch_size=64, members=3)
    stack = build_model(stack_cfg).eval()
    assert isinstance(stack, MemberStack) and len(members_of(stack)) == 3
    assert "members" not in CFG.to_dict() and stack_cfg.to_dict()["members"] == 3  # single models' dicts as before
    names = set(unique_state(stack))
    single = set(unique_state(build_model(CFG)))
    assert names == {f"members.{m}.{n}" for m in range(3) for n in single}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), 1) for m in members_of(stack)]).mean(0)
        assert torch.allclose(torch.softmax(stack(x), 1), mean, atol=1e-5)
    path = tmp_path / "stack.pt"
    save_checkpoint(path, stack, stack_cfg)
    method = load_method("ensemble", [path], passes=8)  # one checkpoint carrying its members
    assert isinstance(method, Ensemble) and method.passes == 3
    assert torch.allclose(method(x).probs.mean(0), mean, atol=1e-5)
    with pytest.raises(ConfigError, match="an ensemble needs at least 2 member models"):
        save_checkpoint(tmp_path / "one.pt", build_model(CFG), CFG)
        load_method("ensemble", [tmp_path / "one.pt"])
    with pytest.raises(ConfigError, match="disagreement head is not supported"):
        build_model(ModelConfig(channels=(8, 16, 32), members=2, disagreement_head=True))


def test_local_training_trains_every_member_with_its_own_seed():
    from ugafl.client.round.local_training import LocalRecipe, plain_training

    torch.manual_seed(0)
    stack_cfg = ModelConfig(channels=(8, 16, 32), patch_size=64, members=2)
    stack = build_model(stack_cfg)
    stack.members[1].load_state_dict(stack.members[0].state_dict())  # identical members before training
    before = {k: v.clone() for k, v in unique_state(stack).items()}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    labels = (rng.random((2, 64, 64)) > 0.7).astype(np.uint8)
    losses = plain_training(stack, stack_cfg, images, labels, LocalRecipe(training="plain", steps=3), seed=0)
    assert len(losses) == 6  # 3 steps for each of the 2 members
    after = unique_state(stack)
    for m in range(2):
        assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(f"members.{m}."))
    first = [k for k in after if k.startswith("members.0.") and after[k].is_floating_point()][0]
    assert not torch.equal(after[first], after[first.replace("members.0.", "members.1.", 1)])  # other seeds


def test_central_training_writes_the_members_and_the_stack_of_them(tmp_path: Path):
    from ugafl.common.central_bank import CentralConfig
    from ugafl.common.training import TrainConfig
    from ugafl.server.central_training import train_central
    from ugafl.simulations.synth import SynthConfig, generate_dataset

    manifest = generate_dataset(tmp_path / "data", SynthConfig(slides_per_centre=2, centres=("RUMC",), seed=0))
    written = train_central(manifest.root, tmp_path / "ens.pt", CFG, TrainConfig(steps=2, batch_size=2, crop=64),
                            CentralConfig(patches_per_slide=4, bank_patch_size=64, members=2), progress=False)
    assert [p.name for p in written] == ["ens-m0.pt", "ens-m1.pt", "ens.pt"]
    stack = load_checkpoint(tmp_path / "ens.pt")
    assert stack.model_config.members == 2
    for m in range(2):
        member = unique_state(load_checkpoint(tmp_path / f"ens-m{m}.pt").model)
        got = unique_state(stack.model)
        assert all(torch.equal(got[f"members.{m}.{k}"], v) for k, v in member.items())
