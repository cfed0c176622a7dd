"""A synthetic slide of real Camelyon size (about 100,000 x 200,000 px at 0.24 µm/px), written
tile by tile so that memory does not grow with the slide.

A few lymph-node sections are rendered once, as the dataset's slides are (`render_section`, then
the centre's scanner blur and noise), at 1 µm/px; copies of them, turned and flipped, are laid
out on the glass on a jittered grid. Every tile of every pyramid level is then resampled from the
sections it overlaps (from a 2^k-reduced copy for the coarse levels), JPEG-encoded in worker
threads, and streamed into a BigTIFF that OpenSlide opens. Tiles with no tissue are one
pre-encoded glass tile. Memory: the sections (about 0.2 GB) plus a bounded window of tiles,
whatever the slide's size.

Frames: the layout is in µm from the slide's top-left corner; level 0 is at `mpp` µm/px."""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from ugafl.common.atomic import atomic_write, atomic_write_text
from ugafl.common.log import get_logger
from ugafl.common.masks import tiff_resolution
from ugafl.simulations.centres import get_centre
from ugafl.simulations.extra import require_jpeg_writer
from ugafl.simulations.render import render_section
from ugafl.simulations.scanner import scan

log = get_logger("real_size")

TILE = 256  # px, the TIFF's tile side at every level
SOURCE_MPP = 1.0  # µm/px at which the sections are rendered and kept
CELL_UM = 5000.0  # one section per grid cell of this side on the glass
KINDS = ("macro", "micro", "negative", "itc")  # the sections, one of each label type
# Real Camelyon size (width, height) at 0.24 µm/px, and the fractions of it by area.
FULL_SIZE = (100_000, 200_000)
SIZES = {"full": FULL_SIZE, "1/4": (FULL_SIZE[0] // 2, FULL_SIZE[1] // 2), "1/16": (FULL_SIZE[0] // 4, FULL_SIZE[1] // 4)}
CAMELYON_MPP = 0.24


@dataclass(frozen=True)
class Placement:
    """One section on the glass: its top-left at (x_um, y_um), turned `quarter_turns` x 90° after
    an optional left-right flip."""

    kind: str
    x_um: float
    y_um: float
    width_um: float
    height_um: float
    quarter_turns: int
    flip: bool
    tumour_um2: float  # tumour area in this copy, µm²


@dataclass(frozen=True)
class RealSizeSlide:
    """What was written: the file, its level-0 size and mpp, levels and the sections' layout."""

    path: str
    width: int
    height: int
    mpp: float
    levels: int
    centre: str
    seed: int
    placements: tuple[Placement, ...]

    @property
    def tissue_area_mm2(self) -> float:
        return sum(p.width_um * p.height_um for p in self.placements) / 1e6


@dataclass
class _Source:
    """A section at SOURCE_MPP * 2^k µm/px for k = 0, 1, ...; glass outside its tissue."""

    kind: str
    pyramid: list[np.ndarray]  # uint8 (h, w, 3) each
    tumour_um2: float


def _section(centre_name: str, world: str, kind: str, seed: int) -> _Source:
    centre = get_centre(centre_name, world)
    number = int.from_bytes(hashlib.sha256(f"{centre_name}/{kind}".encode()).digest()[:4], "little")
    rng = np.random.default_rng(np.random.SeedSequence([seed, number, 7]))
    section = render_section(rng, centre, kind, SOURCE_MPP)
    rgb = scan(rng, section.rgb, centre, SOURCE_MPP, SOURCE_MPP)
    # Flat glass away from the tissue, so a section's box never shows on the glass around it.
    glass = np.clip(np.round(centre.background), 0, 255).astype(np.uint8)
    stained = np.abs(rgb.astype(np.int16) - glass).max(axis=2) > 12
    near_tissue = ndimage.binary_dilation(stained | section.tissue, iterations=max(1, round(20 / SOURCE_MPP)))
    rgb[~near_tissue] = glass
    pyramid = [rgb]
    while min(pyramid[-1].shape[:2]) >= 2 * TILE:
        pyramid.append(np.asarray(Image.fromarray(pyramid[-1]).reduce(2)))
    return _Source(kind, pyramid, float(section.tumour.mask.sum()) * SOURCE_MPP**2)


def _layout(rng: np.random.Generator, size_um: tuple[float, float], sources: list[_Source]) -> list[Placement]:
    """One section per CELL_UM cell (at least one), turned and flipped at random, jittered
    within its cell's slack; kinds cycle so that every kind appears once the slide has four cells."""
    cols = max(1, int(size_um[0] // CELL_UM))
    rows = max(1, int(size_um[1] // CELL_UM))
    cell_w, cell_h = size_um[0] / cols, size_um[1] / rows
    out = []
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        src = sources[i % len(sources)]
        turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        h, w = src.pyramid[0].shape[:2]
        if turns % 2:
            h, w = w, h
        w_um, h_um = w * SOURCE_MPP, h * SOURCE_MPP
        slack_x, slack_y = max(0.0, cell_w - w_um), max(0.0, cell_h - h_um)
        x = c * cell_w + rng.uniform(0, slack_x) if slack_x else c * cell_w
        y = r * cell_h + rng.uniform(0, slack_y) if slack_y else r * cell_h
        out.append(Placement(src.kind, round(x, 3), round(y, 3), w_um, h_um, turns, flip, src.tumour_um2))
    return out


def level_sizes(size: tuple[int, int], min_side: int = 512) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level: halved until the short side would drop below `min_side`."""
    sizes = [size]
    while min(sizes[-1]) // 2 >= min_side:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


class _TileRenderer:
    """Renders and encodes the tiles of one level."""

    def __init__(self, sources: dict[str, _Source], placements: list[Placement], glass: np.ndarray, level_mpp: tuple[float, float],
                 level_size: tuple[int, int], quality: int):
        self.sources, self.placements, self.glass = sources, placements, glass
        self.mx, self.my = level_mpp
        self.size = level_size
        self.quality = quality
        # The finest source copy not finer than this level (copy k is at SOURCE_MPP * 2^k µm/px).
        self.k = max(0, int(math.floor(math.log2(max(min(level_mpp) / SOURCE_MPP, 1.0)))))
        self.views = {(p.kind, p.quarter_turns, p.flip): self._view(p) for p in placements}

    def _view(self, p: Placement) -> np.ndarray:
        pyramid = self.sources[p.kind].pyramid
        src = pyramid[min(self.k, len(pyramid) - 1)]
        src = src[:, ::-1] if p.flip else src
        return np.rot90(src, p.quarter_turns)  # a view: nothing is copied

    def blank(self) -> bytes:
        return self.encode(np.broadcast_to(self.glass, (TILE, TILE, 3)))

    def encode(self, tile: np.ndarray) -> bytes:
        import imagecodecs

        # What tifffile writes for photometric RGB with JPEG: YCbCr, 2x2 chroma subsampling.
        return imagecodecs.jpeg_encode(np.ascontiguousarray(tile), level=self.quality, colorspace="RGB",
                                        outcolorspace="YCBCR", subsampling=(2, 2))

    def overlapping(self, tx: int, ty: int) -> list[Placement]:
        x0, y0 = tx * TILE * self.mx, ty * TILE * self.my
        x1, y1 = x0 + TILE * self.mx, y0 + TILE * self.my
        return [p for p in self.placements if p.x_um < x1 and p.x_um + p.width_um > x0 and p.y_um < y1 and p.y_um + p.height_um > y0]

    def render(self, tx: int, ty: int, hits: list[Placement]) -> bytes:
        unit = SOURCE_MPP * 2**self.k  # µm per canvas pixel
        x0, y0 = tx * TILE * self.mx / unit, ty * TILE * self.my / unit
        x1, y1 = x0 + TILE * self.mx / unit, y0 + TILE * self.my / unit
        ix0, iy0 = math.floor(x0) - 1, math.floor(y0) - 1
        ix1, iy1 = math.ceil(x1) + 1, math.ceil(y1) + 1
        canvas = np.empty((iy1 - iy0, ix1 - ix0, 3), np.uint8)
        canvas[:] = self.glass
        for p in hits:
            view = self.views[(p.kind, p.quarter_turns, p.flip)]
            px, py = round(p.x_um / unit), round(p.y_um / unit)
            sx0, sy0 = max(ix0, px), max(iy0, py)
            sx1, sy1 = min(ix1, px + view.shape[1]), min(iy1, py + view.shape[0])
            if sx1 > sx0 and sy1 > sy0:
                canvas[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = view[sy0 - py : sy1 - py, sx0 - px : sx1 - px]
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
        tile = np.asarray(Image.fromarray(canvas).resize((TILE, TILE), Image.Resampling.BILINEAR, box=box))
        # The level's edge: what lies beyond the image is glass in the file too.
        w, h = self.size
        if (tx + 1) * TILE > w or (ty + 1) * TILE > h:
            tile = tile.copy()
            tile[max(0, h - ty * TILE):] = self.glass
            tile[:, max(0, w - tx * TILE):] = self.glass
        return self.encode(tile)


def _ordered(pool: ThreadPoolExecutor, renderer: _TileRenderer, window: int, bar) -> Iterator[bytes]:
    """The level's tiles, row-major, encoded by `pool` with at most `window` in flight."""
    w, h = renderer.size
    blank = renderer.blank()
    pending: deque[Future[bytes] | bytes] = deque()
    for ty in range(math.ceil(h / TILE)):
        for tx in range(math.ceil(w / TILE)):
            hits = renderer.overlapping(tx, ty)
            pending.append(pool.submit(renderer.render, tx, ty, hits) if hits else blank)
            while len(pending) >= window:
                item = pending.popleft()
                bar.update(1)
                yield item if isinstance(item, bytes) else item.result()
    while pending:
        item = pending.popleft()
        bar.update(1)
        yield item if isinstance(item, bytes) else item.result()


def write_real_size_slide(path: str | Path, size: tuple[int, int] = FULL_SIZE, mpp: float = CAMELYON_MPP, centre: str = "RUMC",
                          world: str = "benchmark-2", seed: int = 0, workers: int = 2, progress: bool = False,
                          kinds: tuple[str, ...] = KINDS) -> RealSizeSlide:
    """Writes a pyramidal BigTIFF of `size` (width, height) level-0 px at `mpp` µm/px to `path`
    (atomically), with a `<path>.json` record of its layout beside it; returns the record. The
    sections are one of each of `kinds` (label types), laid out in turn."""
    require_jpeg_writer()
    path = Path(path)
    width, height = size
    if width < TILE or height < TILE:
        raise ValueError(f"size must be at least {TILE} x {TILE} px, got {width} x {height}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, width, height]))
    sources = [_section(centre, world, kind, seed) for kind in tqdm(kinds, desc="sections", disable=not progress, leave=False)]
    placements = _layout(rng, (width * mpp, height * mpp), sources)
    glass = np.clip(np.round(get_centre(centre, world).background), 0, 255).astype(np.uint8)
    by_kind = {s.kind: s for s in sources}
    levels = level_sizes(size)
    quality = get_centre(centre, world).jpeg_quality
    total = sum(math.ceil(w / TILE) * math.ceil(h / TILE) for w, h in levels)

    def write(tmp: Path) -> None:
        with (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ugafl-tiles") as pool,
              tqdm(total=total, desc=path.name, unit="tile", disable=not progress, leave=False) as bar,
              tifffile.TiffWriter(tmp, bigtiff=True) as tif):
            for i, (w, h) in enumerate(levels):
                level_mpp = (mpp * width / w, mpp * height / h)
                renderer = _TileRenderer(by_kind, placements, glass, level_mpp, (w, h), quality)
                tif.write(_ordered(pool, renderer, 8 * workers, bar), shape=(h, w, 3), dtype=np.uint8, photometric="rgb",
                          tile=(TILE, TILE), compression="jpeg", subfiletype=0 if i == 0 else 1, metadata=None,
                          **tiff_resolution(level_mpp[0]))

    atomic_write(path, write)
    record = RealSizeSlide(str(path), width, height, mpp, len(levels), centre, seed, tuple(placements))
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(asdict(record), indent=1))
    log.info("%s: %d x %d px at %g µm/px, %d levels, %d sections (%.0f mm² of glass covered)", path, width, height, mpp,
             len(levels), len(placements), record.tissue_area_mm2)
    return record
