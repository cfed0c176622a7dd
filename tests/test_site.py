"""A site's plain functions: its config file, fine-tuning only when there is something new, and
Dice on its corrected patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from review_helpers import he_patch, ring_mask
from ugafl.client.round.local_evaluation import evaluate
from ugafl.client.round.local_training import LocalRecipe, train
from ugafl.client.site_config import SiteConfig
from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue
from ugafl.common.errors import ConfigError
from ugafl.common.model import ModelConfig, build_model

CFG = ModelConfig(channels=(4, 8))


def write_site(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "inbox").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "site.toml"
    path.write_text(f'[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coordinator.pub"]\n{extra}')
    return path


def test_site_config_resolves_paths_and_names_bad_fields(tmp_path: Path) -> None:
    site = SiteConfig.load(write_site(tmp_path))
    assert site.workspace == (tmp_path / "ws").resolve() and site.trusted_keys == ((tmp_path / "coordinator.pub").resolve(),)
    assert site.role == "site" and site.train
    for extra, message in [('role = "boss"\n', r"site.toml \[site\] role: expected one of site, central, got 'boss'"),
                           ('role = "central"\n', r"site.toml \[site\] central_data: role 'central' needs central_data"),
                           ('annotator = "simulated"\n', r"site.toml \[site\] annotator_data: annotator 'simulated' needs")]:
        with pytest.raises(ConfigError, match=message):
            SiteConfig.load(write_site(tmp_path, extra))
    (tmp_path / "bad.toml").write_text('[site]\nworkspace = "ws"\nslides = "inbox"\n')
    with pytest.raises(ConfigError, match=r"bad.toml \[site\] trusted_keys: is required"):
        SiteConfig.load(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="missing.toml: site config not found"):
        SiteConfig.load(tmp_path / "missing.toml")


def test_train_only_when_there_are_new_corrections_and_evaluate_on_them(tmp_path: Path) -> None:
    site = SiteConfig.load(write_site(tmp_path))
    torch.manual_seed(0)
    model = build_model(CFG)
    state, ids, metrics = train(site, model, CFG, plain(), seed=0)
    assert state is None and ids == [] and metrics["num-examples"] == 0  # an empty queue: nothing to send
    assert evaluate(site, model, CFG) == {"num-examples": 0.0, "site-weight": 0.0}

    mask = ring_mask()
    with CorrectionQueue(site.workspace) as q:
        for i in range(3):
            item = q.add(NewItem(PatchOrigin("s.tif", (256 * i, 0, 256, 256), 2.0),
                                 PatchReason(0.5, "uga", "random", "v", 1),
                                 PatchPixels(he_patch(i), mask, np.zeros(mask.shape, np.float32))))
            q.submit_correction(item, mask, "dr")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, ids, metrics = train(site, model, CFG, plain(proximal_mu=0.01), seed=0)
    assert len(ids) == 3 and metrics["new-corrections"] == 3 and set(state) == set(before)
    assert any(not torch.equal(state[k], before[k]) for k in before)
    again = train(site, build_model(CFG), CFG, plain(), seed=0)
    assert again[0] is None and again[1] == []  # the same corrections: nothing new this round
    keeps_vote = SiteConfig.load(write_site(tmp_path, extra="retrain = true\n"))
    state, ids, metrics = train(keeps_vote, build_model(CFG), CFG, plain(), seed=0)
    assert state is not None and len(ids) == 3 and metrics["new-corrections"] == 0  # retrains on all, none new
    result = evaluate(site, model, CFG)
    assert result["num-examples"] == 3 and result["site-weight"] == 1.0
    # A model that calls every pixel tumour: pooled Dice is 2T / (T + all pixels) over the 3 patches.
    assert evaluate(site, AllTumour(), CFG) == pytest.approx(
        {"num-examples": 3.0, "site-weight": 1.0, "dice": 2 * mask.sum() / (mask.sum() + mask.size)})
    assert evaluate(site, AllTumour(sign=-1.0), CFG)["dice"] == 0.0  # nothing called tumour: no overlap

    # Anchored, with the gate: the newest correction is held out of training, and both the train
    # reply (incoming model) and the evaluation (the model judged) report pixel counts on it.
    gated = SiteConfig.load(write_site(tmp_path / "gated"))
    with CorrectionQueue(gated.workspace) as q:
        for i in range(3):
            item = q.add(NewItem(PatchOrigin("s.tif", (256 * i, 0, 256, 256), 2.0),
                                 PatchReason(0.5, "uga", "random", "v", 1),
                                 PatchPixels(he_patch(i), mask, np.zeros(mask.shape, np.float32))))
            q.submit_correction(item, mask, "dr")
    recipe = LocalRecipe(training="anchored", steps=10, epochs=12.0, lr=1e-3, loss="batch-dice-ce", gate=True)
    state, ids, metrics = train(gated, AllTumour(), CFG, recipe, seed=0)
    assert ids == [1, 2] and metrics["num-examples"] == 2  # item 3 held out
    assert metrics["steps"] == 3  # 12 passes over 2 patches, one crop each (the crop is the patch), 8 a step
    assert metrics["anchors"] == 0  # nothing scored in this workspace yet: no unlabelled tissue to anchor to
    assert metrics["gate-incoming-held-tp"] == mask.sum() and metrics["gate-incoming-held-fn"] == 0
    judged = evaluate(gated, AllTumour(sign=-1.0), CFG, gate=True)
    assert judged["gate-held-tp"] == 0 and judged["gate-held-fn"] == mask.sum() and judged["num-examples"] == 3


def plain(**changes) -> LocalRecipe:
    """The plain recipe: 2 steps on the corrected patches alone."""
    return LocalRecipe(**{**dict(training="plain", steps=2, lr=1e-3), **changes})


class AllTumour(torch.nn.Module):
    """Logits that put every pixel in class 1 (sign 1) or class 0 (sign -1)."""

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.sign = sign
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, x.shape[2], x.shape[3])
        logits[:, 1] = self.sign
        return logits + 0 * self.anchor
