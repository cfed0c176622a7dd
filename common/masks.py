"""Label masks on their own grid (e.g. the tumour mask at 1 µm/px) and resampling them onto a
slide region at another resolution. Frames: level-0 pixels of the slide; mask pixel (i, j)
covers the level-0 box starting at (j, i) * mask_mpp / slide_mpp."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


import numpy as np
import tifffile
from PIL import Image

from ugafl.common.atomic import atomic_write
from ugafl.common.errors import DataError


@dataclass(frozen=True, eq=False)
class MaskImage:
    array: np.ndarray  # bool (H, W)
    mpp: float  # µm/px of the mask grid

    def region(self, location: tuple[int, int], size: tuple[int, int], slide_mpp: float, mpp: float) -> np.ndarray:
        """Float32 coverage (0..1) of the level-0 box `location` (x, y), `size` (w, h) at `mpp`:
        output (round(h*slide_mpp/mpp), round(w*slide_mpp/mpp)); outside the mask counts as 0."""
        scale = slide_mpp / self.mpp  # mask px per level-0 px
        out_w, out_h = max(1, round(size[0] * slide_mpp / mpp)), max(1, round(size[1] * slide_mpp / mpp))
        x0, y0 = location[0] * scale, location[1] * scale
        x1, y1 = (location[0] + size[0]) * scale, (location[1] + size[1]) * scale
        ix0, iy0, ix1, iy1 = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
        h, w = self.array.shape
        crop = np.zeros((iy1 - iy0, ix1 - ix0), np.float32)
        sy0, sx0, sy1, sx1 = max(iy0, 0), max(ix0, 0), min(iy1, h), min(ix1, w)
        if sy1 > sy0 and sx1 > sx0:
            crop[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = self.array[sy0:sy1, sx0:sx1]
        img = Image.fromarray(crop, mode="F")
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
        return np.asarray(img.resize((out_w, out_h), Image.Resampling.BOX, box=box), dtype=np.float32)


def tiff_resolution(mpp: float) -> dict:
    """tifffile keyword arguments that record `mpp` µm/px as pixels per centimetre."""
    return {"resolution": (10000.0 / mpp, 10000.0 / mpp), "resolutionunit": "CENTIMETER"}


def write_mask(path: Path, mask: np.ndarray, mpp: float) -> None:
    """A bool mask as uint8 0/1 TIFF (deflate) with its µm/px in the resolution tags, atomically."""
    data = mask.astype(np.uint8)
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack", metadata=None,
                                                    **tiff_resolution(mpp)))


def read_mask(path: Path) -> tuple[np.ndarray, float]:
    """A mask written by write_mask: (bool array, µm/px)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        data = page.asarray()
        x_res = page.tags["XResolution"].value
    return data > 0, 10000.0 * x_res[1] / x_res[0]


def load_mask(path: str | Path) -> MaskImage:
    """A mask TIFF (uint8 0/1 with mpp in its resolution tags)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file missing")
    array, mpp = read_mask(path)
    return MaskImage(array=array, mpp=mpp)
