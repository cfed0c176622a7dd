"""Stain augmentation: each training crop re-stained by torchstain's Macenko augmentor (Tellez et
al.'s H&E concentration jitter), as a MONAI random dict transform seeded with the others.

The crop's own haematoxylin and eosin vectors are found (Macenko), each stain's concentration is
scaled by a factor in [1 - sigma_scale, 1 + sigma_scale] and shifted by [-sigma_shift, sigma_shift],
and the crop is re-composed with its own stain vectors. A crop with too little stained tissue for
the decomposition (glass, a thin strip of tissue) is left as it is."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from ugafl.common.log import get_logger

log = get_logger("stain")

# pixels whose optical density is at least BETA in every channel count as stained (Macenko's default)
BETA = 0.15
MIN_STAINED_SHARE = 0.05  # below this share of stained pixels the crop is left as it is


def stained_share(image: np.ndarray, io: float = 240.0) -> float:
    """Share of the pixels of an (H, W, 3) uint8 RGB image that are stained (optical density >= BETA in every channel)."""
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / io)
    return float(np.all(od >= BETA, axis=1).mean())


def jitter_stains(image: np.ndarray, seed: int, sigma_scale: float = 0.2, sigma_shift: float = 0.2) -> np.ndarray:
    """(H, W, 3) uint8 RGB `image` with its H&E concentrations jittered (torchstain's Macenko
    augmentor); the image itself when it holds too little stained tissue to decompose. Seeded:
    torchstain draws from NumPy's global generator, which is restored afterwards."""
    from torchstain.numpy.augmentors import NumpyMacenkoAugmentor

    if stained_share(image) < MIN_STAINED_SHARE:
        return image
    augmentor = NumpyMacenkoAugmentor(sigma1=sigma_scale, sigma2=sigma_shift)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            augmentor.fit(image)
            out = augmentor.augment()
    except (np.linalg.LinAlgError, ValueError, IndexError) as error:  # a degenerate crop: one stain, no spread
        log.debug("stain jitter skipped on a %s crop: %s", image.shape, error)
        return image
    finally:
        np.random.set_state(state)
    return out if out.shape == image.shape else image


class RandStainJitterd(RandomizableTransform, MapTransform):
    """With probability `prob`, jitter the H&E stains of `keys` ((3, H, W) float tensors in [0, 1])."""

    def __init__(self, keys="image", prob: float = 0.8, sigma_scale: float = 0.2, sigma_shift: float = 0.2,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.sigma_scale, self.sigma_shift = sigma_scale, sigma_shift
        self._seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            rgb = (image.detach().cpu().permute(1, 2, 0).numpy().clip(0, 1) * 255).round().astype(np.uint8)
            out = jitter_stains(rgb, self._seed, self.sigma_scale, self.sigma_shift)
            d[key] = torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1).to(image.device)
        return d
