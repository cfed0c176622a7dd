"""Shared test helpers: the real OpenSlide fixture files, and a synthetic pyramidal TIFF whose
drawn content (tissue ellipse, hole, marker square) is known in level-0 coordinates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "openslide"


@dataclass(frozen=True)
class SyntheticTiff:
    """Where things are drawn, in level-0 pixels (x, y)."""

    path: Path
    mpp: float
    width: int
    height: int
    background: tuple[int, int, int]
    tissue_colour: tuple[int, int, int] = (185, 85, 150)  # dark pink
    ellipse_centre: tuple[float, float] = (1024.0, 768.0)
    ellipse_axes: tuple[float, float] = (700.0, 500.0)  # semi-axes
    hole_centre: tuple[float, float] = (1150.0, 700.0)
    hole_radius: float = 150.0  # 75 µm at 0.5 µm/px: a 150 µm vacuole, must stay a hole
    marker_box: tuple[int, int, int, int] = (1600, 160, 64, 64)  # x, y, w, h: blue, 32 µm, a speck
    marker_colour: tuple[int, int, int] = (20, 40, 200)
    draw_tissue: bool = True

    def tissue_truth(self) -> np.ndarray:
        """Bool (height, width) level-0 mask of the drawn tissue (ellipse minus hole)."""
        y, x = np.ogrid[: self.height, : self.width]
        (cx, cy), (ax, ay) = self.ellipse_centre, self.ellipse_axes
        ellipse = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1
        hx, hy = self.hole_centre
        hole = (x - hx) ** 2 + (y - hy) ** 2 <= self.hole_radius**2
        return ellipse & ~hole if self.draw_tissue else np.zeros((self.height, self.width), bool)

    @property
    def expected_fraction(self) -> float:
        """Analytic tissue fraction of the whole slide."""
        if not self.draw_tissue:
            return 0.0
        area = np.pi * self.ellipse_axes[0] * self.ellipse_axes[1] - np.pi * self.hole_radius**2
        return float(area / (self.width * self.height))


def write_synthetic_tiff(
    path: Path,
    *,
    mpp: float | None = 0.5,
    mpp_y: float | None = None,
    size: tuple[int, int] = (2048, 1536),
    background: tuple[int, int, int] = (242, 240, 245),
    levels: int = 4,
    compression: str = "zlib",
    draw_tissue: bool = True,
    noise: float = 3.0,
) -> SyntheticTiff:
    """A tiled (256) generic TIFF pyramid that OpenSlide reads: level 0 plus `levels - 1` halvings
    as top-level IFDs with subfiletype=1. `mpp=None` writes no resolution at all."""
    width, height = size
    info = SyntheticTiff(path, mpp or 0.0, width, height, background, draw_tissue=draw_tissue)
    image = np.empty((height, width, 3), np.float32)
    image[:] = background
    image[info.tissue_truth()] = info.tissue_colour
    mx, my, mw, mh = info.marker_box
    image[my : my + mh, mx : mx + mw] = info.marker_colour
    image += noise * np.random.default_rng(0).standard_normal(image.shape, dtype=np.float32)
    pyramid = [np.clip(np.rint(image), 0, 255).astype(np.uint8)]
    for _ in range(levels - 1):
        prev = pyramid[-1].astype(np.float32)
        h2, w2 = prev.shape[0] // 2, prev.shape[1] // 2
        half = prev[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, 3).mean(axis=(1, 3))
        pyramid.append(np.rint(half).astype(np.uint8))
    with tifffile.TiffWriter(path) as tiff:
        for index, level in enumerate(pyramid):
            extra = {}
            if mpp is not None:
                scale = 2**index
                extra = dict(
                    resolution=(10000 / (mpp * scale), 10000 / ((mpp_y or mpp) * scale)),
                    resolutionunit="CENTIMETER",
                )
            tiff.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if index == 0 else 1,
                metadata=None,
                **extra,
            )
    return info


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real slide files from openslide-python's test suite (see its README.md)."""
    if not FIXTURES_DIR.is_dir():
        pytest.fail(f"slide fixtures missing: {FIXTURES_DIR}")
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def synthetic_tiff(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTiff:
    """The default synthetic slide: 2048x1536 at 0.5 µm/px, 4 levels, near-white glass."""
    return write_synthetic_tiff(tmp_path_factory.mktemp("synthetic") / "slide.tiff")


@pytest.fixture(scope="session")
def small_federation_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, central checkpoint) of `federation_helpers.small_federation` over RUMC, UMCU, CWZ
    and RST, made once per session: the federation tests on Flower's engines all read it (none
    writes into it), so the slides and the central model are not made again for each."""
    from federation_helpers import SMALL_CENTRES, SMALL_MODEL, small_federation

    return small_federation(tmp_path_factory.mktemp("small-federation"), SMALL_CENTRES, SMALL_MODEL)


@pytest.fixture
def make_synthetic_tiff(tmp_path: Path) -> Callable[..., SyntheticTiff]:
    """Factory: make_synthetic_tiff(name="x.tiff", **write_synthetic_tiff options)."""

    def make(name: str = "slide.tiff", **options) -> SyntheticTiff:
        return write_synthetic_tiff(tmp_path / name, **options)

    return make
