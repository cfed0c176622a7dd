"""The scanner: optical blur, resampling to the scan resolution, sensor noise. JPEG quality is
applied when the pyramid is written."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ugafl.simulations.centres import CentreProfile


def scan(rng: np.random.Generator, rgb: np.ndarray, centre: CentreProfile, render_mpp: float, scan_mpp: float) -> np.ndarray:
    """uint8 (H', W', 3) level-0 image at `scan_mpp` µm/px from a float render at `render_mpp`."""
    sigma = centre.blur_um / render_mpp
    blurred = np.stack([ndimage.gaussian_filter(rgb[..., c], sigma) for c in range(3)], axis=-1) if sigma > 0.05 else rgb
    # Sensor noise (luminance plus a little per channel), at the render grid: the cheap place.
    noisy = blurred + rng.standard_normal(blurred.shape[:2] + (1,), dtype=np.float32) * np.float32(centre.noise)
    noisy += rng.standard_normal(blurred.shape, dtype=np.float32) * np.float32(centre.noise * 0.5)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    if abs(scan_mpp - render_mpp) > 1e-6:
        h, w = img.shape[:2]
        size = (round(w * render_mpp / scan_mpp), round(h * render_mpp / scan_mpp))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
    return img
