"""Training augmentation from MONAI: geometry (flips, 90° turns) and ordinary colour and scanner
augmentation (per-channel intensity scale and shift, contrast, blur, noise); optionally H&E stain
jitter first (common.stain, torchstain's Macenko augmentor)."""

from __future__ import annotations

from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

KEYS = ("image", "label", "variance")  # "variance": EDUE's raters'-variance target, when present


def training_transforms(colour: bool = True, stain: bool = False) -> Compose:
    """Dict transforms over {"image": (3, H, W) float in [0, 1], "label": (1, H, W)[, "variance": (1, H, W)]};
    `stain`: H&E stain jitter before the colour augmentation."""
    geometry = [
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0, allow_missing_keys=True),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1, allow_missing_keys=True),
        RandRotate90d(keys=KEYS, prob=0.5, max_k=3, allow_missing_keys=True),
    ]
    appearance = [
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.8, channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=0.08, prob=0.8, channel_wise=True),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.4), prob=0.5),
        RandGaussianSmoothd(keys="image", sigma_x=(0.2, 1.0), sigma_y=(0.2, 1.0), prob=0.2),
        RandGaussianNoised(keys="image", std=0.02, prob=0.3),
    ]
    stains = []
    if stain:
        from ugafl.common.stain import RandStainJitterd

        stains = [RandStainJitterd(keys="image", prob=0.8)]
    return Compose(geometry + stains + (appearance if colour else []))
