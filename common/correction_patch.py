"""The corrected patch: a square of physical size. A pathologist corrects, and a site trains on,
patches `patch_um` µm wide; the default is the paper's (1024 px at 1 µm/px, 1.05 mm²). Selection
scores the same squares, so what is chosen is what is corrected."""

from __future__ import annotations

CORRECTION_PATCH_UM = 1024.0  # side of a corrected patch, µm


def patch_px(patch_um: float, mpp: float) -> int:
    """Side in pixels at `mpp` µm/px of a square patch `patch_um` µm wide."""
    if patch_um <= 0 or mpp <= 0:
        raise ValueError(f"patch_um and mpp must be > 0, got {patch_um} and {mpp}")
    return max(1, round(patch_um / mpp))
