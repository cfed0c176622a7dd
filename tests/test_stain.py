"""H&E stain augmentation (common.stain): torchstain's Macenko augmentor on real-looking synthetic
tissue re-weights the two stains without changing their hues, is seeded with the other MONAI
transforms, leaves glass alone, and reaches both the central and the sites' training as an option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ugafl.client.round.local_training import LocalRecipe, local_schedule
from ugafl.common.augment import training_transforms
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.stain import RandStainJitterd, jitter_stains, stained_share
from ugafl.common.training import TrainConfig, train_segmentation
from ugafl.server.federation.rounds import local_recipe
from ugafl.server.federation.settings import FederationSettings
from ugafl.simulations.centres import get_centre
from ugafl.simulations.render import render_section


@pytest.fixture(scope="module")
def tissue() -> tuple[np.ndarray, np.ndarray]:
    """A 128 px crop of a synthetic RUMC section around its tumour (uint8 RGB) and its mask."""
    section = render_section(np.random.default_rng(0), get_centre("RUMC", "benchmark-2"), "macro", 4.0)
    ys, xs = np.nonzero(section.tumour.mask)
    y, x = int(ys.mean()) - 64, int(xs.mean()) - 64
    rgb = section.rgb.clip(0, 255).astype(np.uint8)
    return rgb[y:y + 128, x:x + 128].copy(), section.tumour.mask[y:y + 128, x:x + 128].copy()


def stain_vectors(image: np.ndarray) -> np.ndarray:
    """The (3, 2) unit H&E optical-density vectors of `image` (MONAI's Macenko extractor)."""
    from monai.apps.pathology.transforms import ExtractHEStains

    return ExtractHEStains()(image)


def test_the_stains_are_reweighted_and_keep_their_hues(tissue):
    crop, _ = tissue
    assert stained_share(crop) > 0.05
    outs = [jitter_stains(crop, seed) for seed in range(6)]
    assert all(out.shape == crop.shape and out.dtype == np.uint8 for out in outs)
    changes = [np.abs(out.astype(int) - crop).mean() for out in outs]
    assert min(changes) > 1.0 and max(changes) > 5.0, changes  # grey levels out of 255
    means = np.array([out.reshape(-1, 3).mean(0) for out in outs])
    assert means.std(axis=0).min() > 2.0  # the seeds give different stainings
    before = stain_vectors(crop)
    for out in outs:  # the same haematoxylin and eosin hues, in other amounts
        cosines = (stain_vectors(out) * before).sum(axis=0)
        assert cosines.min() > 0.98, cosines


def test_seeded_and_glass_is_left_alone(tissue):
    crop, _ = tissue
    assert np.array_equal(jitter_stains(crop, 7), jitter_stains(crop, 7))
    assert not np.array_equal(jitter_stains(crop, 7), jitter_stains(crop, 8))
    state = np.random.get_state()[1].copy()
    jitter_stains(crop, 7)
    assert np.array_equal(np.random.get_state()[1], state)  # NumPy's global generator is given back as it was
    glass = np.full((64, 64, 3), 238, np.uint8)
    assert stained_share(glass) == 0 and np.array_equal(jitter_stains(glass, 1), glass)
    one_colour = np.full((64, 64, 3), (150, 60, 140), np.uint8)  # stained but nothing to decompose
    assert jitter_stains(one_colour, 1).shape == one_colour.shape


def test_the_transform_runs_with_monais_and_touches_only_the_image(tissue):
    crop, mask = tissue
    sample = {"image": torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0,
              "label": torch.from_numpy(mask[None].astype(np.float32))}
    runs = []
    for _ in range(2):
        transforms = training_transforms(colour=False, stain=True)
        transforms.set_random_state(seed=3)
        runs.append([transforms(dict(sample)) for _ in range(4)])
    for a, b in zip(*runs):  # seeded like every other transform
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    geometry_only = training_transforms(colour=False, stain=False)
    geometry_only.set_random_state(seed=3)
    plain = [geometry_only(dict(sample)) for _ in range(4)]
    assert any(not torch.allclose(s["image"], p["image"]) for s, p in zip(runs[0], plain))
    for s, p in zip(runs[0], plain):  # the stain step draws no geometry: the labels follow the same flips
        assert torch.equal(s["label"], p["label"])

    always = RandStainJitterd(prob=1.0)
    always.set_random_state(seed=0)
    out = always(sample)["image"]
    assert out.shape == sample["image"].shape and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out, sample["image"])


def test_an_option_of_central_and_site_training(tissue):
    crop, mask = tissue
    images, labels = np.repeat(crop[None], 2, 0), np.repeat(mask[None].astype(np.uint8), 2, 0)
    model = build_model(ModelConfig(channels=(4, 8, 16), dropout=0.1))
    cfg = TrainConfig(steps=2, batch_size=2, crop=64, stain_augmentation=True)
    losses = train_segmentation(model, images, labels, cfg, "cpu", progress=False)
    assert len(losses) == 2 and all(np.isfinite(losses))

    paths = {"central_checkpoint": "-", "out_dir": "-", "signing_key": "-"}
    sent = local_recipe(FederationSettings(**paths, stain_augmentation=True))
    assert sent["stain-augmentation"] is True
    recipe = LocalRecipe.from_message(sent)
    assert recipe.stain_augmentation
    assert local_schedule(images, 10, 1e-3, 0, stain_augmentation=recipe.stain_augmentation).stain_augmentation
    assert not LocalRecipe.from_message(local_recipe(FederationSettings(**paths))).stain_augmentation  # off by default
    assert not LocalRecipe.from_message({}).stain_augmentation  # an older coordinator does not send it
