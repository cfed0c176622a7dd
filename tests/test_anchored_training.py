"""Local training anchored to the global model (common.anchored_training): the number of steps
follows the corrected area, corrected crops are centred on the tumour border or on tissue (never
glass), and the anchor crops keep the model near what the global model predicted on the site's
own tissue where fine-tuning on the corrections alone forgets it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ugafl.common.anchored_training import AnchoredConfig, _batch, _centres, border_band, train_anchored
from ugafl.common.augment import training_transforms
from ugafl.common.model import ModelConfig, build_model, to_input

GLASS, TISSUE, TUMOUR = (242, 242, 245), (200, 120, 170), (120, 40, 130)


def patch(size: int = 256, tumour: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left 40% glass, the rest tissue, with a tumour disc (radius 30 px) in the tissue."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = TISSUE
    image[:, : int(0.4 * size)] = GLASS
    mask = np.zeros((size, size), np.uint8)
    if tumour:
        yy, xx = np.mgrid[:size, :size]
        mask[(yy - size // 2) ** 2 + (xx - int(0.7 * size)) ** 2 < 30 ** 2] = 1
        image[mask > 0] = TUMOUR
    noise = np.random.default_rng(seed).integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8), mask


def test_steps_follow_the_corrected_area():
    cfg = AnchoredConfig(epochs=2.0, max_steps=100, batch_size=8, crop=128, anchor_share=0.5)
    assert cfg.anchors_per_step(True) == 4 and cfg.anchors_per_step(False) == 0
    assert cfg.steps(4, 512) == 32  # 4 patches of 16 crops each, twice, 4 corrected crops per step
    assert cfg.steps(9, 512) == 72
    assert cfg.steps(20, 512) == 100  # at most max_steps
    assert cfg.steps(4, 512, have_anchors=False) == 16  # all 8 crops of a step are corrected ones
    assert AnchoredConfig(anchor_share=0.99).anchors_per_step(True) == 7  # one corrected crop always stays


def test_the_border_band_is_where_the_mask_changes():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    band = border_band(mask, 2)
    assert band[10, 20] and band[8, 20] and band[11, 20] and not band[20, 20] and not band[0, 0]
    assert not border_band(np.zeros((8, 8), np.uint8), 2).any()


@pytest.mark.parametrize("border_share", [0.0, 1.0])
def test_corrected_crops_sit_on_tissue_or_the_tumour_border_never_on_glass(border_share: float):
    image, mask = patch()
    cfg = AnchoredConfig(batch_size=64, crop=64, border_share=border_share, colour_augmentation=False)
    centres = _centres(image[None], mask[None], 2.0)
    x, target = _batch(np.random.default_rng(0), image[None], mask[None], centres, np.zeros((0, 64, 64, 3), np.uint8),
                       np.zeros((0, 64, 64), np.float32), 0, cfg, training_transforms(False))
    assert x.shape == (64, 3, 64, 64) and target.shape == (64, 2, 64, 64)
    assert torch.allclose(target.sum(1), torch.ones(64, 64, 64))
    glass = (x * 255 > 235).all(dim=1).float().mean(dim=(1, 2))  # share of each crop that is glass
    # centred on tissue: at most half glass (at the tissue's edge); placed uniformly, a 64-px crop
    # of this patch would be 34% glass on average
    assert float(glass.max()) <= 0.5 + 1e-6 and float(glass.mean()) < 0.15
    tumour = target[:, 1].mean(dim=(1, 2))
    if border_share == 1.0:  # every crop holds both tumour and its surroundings
        assert bool(((tumour > 0.02) & (tumour < 0.98)).all())
    else:
        assert float((tumour > 0).float().mean()) < 1.0


def _mean_tumour_probability(model: torch.nn.Module, images: np.ndarray) -> float:
    with torch.no_grad():
        return float(torch.softmax(model.eval()(to_input(images)), 1)[:, 1].mean())


def test_anchors_keep_what_the_global_model_predicted_where_corrections_alone_forget_it():
    torch.manual_seed(0)
    cfg = ModelConfig(channels=(8, 16, 32), patch_size=64)
    teacher = build_model(cfg).eval()
    with torch.no_grad():  # a global model that sees some tumour on this site's tissue
        teacher.model[2][1].conv.unit0.conv.bias += torch.tensor([0.0, 1.0])
    corrected, masks = zip(*(patch(128, tumour=False, seed=k) for k in range(2)))  # corrections without tumour
    corrected, masks = np.stack(corrected), np.stack(masks)
    rng = np.random.default_rng(1)  # the site's other tissue, where the global model sees tumour
    anchors = np.clip(np.array(TUMOUR) + rng.integers(-6, 7, (16, 64, 64, 3)), 0, 255).astype(np.uint8)
    with torch.no_grad():
        probs = torch.softmax(teacher(to_input(anchors)), 1)[:, 1].numpy()
    before = _mean_tumour_probability(teacher, anchors)
    assert before > 0.4
    after, on_corrected = {}, {}
    for share in (0.0, 0.5):
        model = build_model(cfg)
        model.load_state_dict(teacher.state_dict())
        schedule = AnchoredConfig(epochs=80.0, max_steps=40, batch_size=8, crop=64, anchor_share=share, lr=1e-2, seed=0)
        losses = train_anchored(model, corrected, masks, anchors if share else anchors[:0], probs if share else probs[:0],
                                schedule, 2.0)
        assert len(losses) == schedule.steps(2, 128, share > 0) == 40 and np.isfinite(losses).all()
        after[share] = _mean_tumour_probability(model, anchors)
        on_corrected[share] = _mean_tumour_probability(model, corrected)
    # Both learn the corrections (no tumour on this tissue)...
    assert on_corrected[0.0] < before - 0.3 and on_corrected[0.5] < before - 0.3
    # ...but the corrections alone also teach "no tumour" where the global model saw some; the
    # anchors keep the model at less than half that drift (measured: 0.61 alone, 0.23 anchored).
    assert before - after[0.0] > 0.4
    assert abs(after[0.5] - before) < (before - after[0.0]) / 2
