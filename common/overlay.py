"""Slide overlays a viewer lays over the slide: the predicted tumour mask and an uncertainty map as
pyramidal tiled TIFFs in the slide's frame, written while the patches stream past.

Frame: level 0 of an overlay is the slide's level 0 reduced by 2^k, the largest power of two not
coarser than the model's mpp (1.92 µm/px for a 0.24 µm/px slide and a 2 µm/px model), so that
its size is the slide's divided by 2^k and every level below halves again, as the slide's own
pyramid does; the resolution tags carry its µm/px. Pixel (i, j) covers the level-0 box starting
at (j, i) * 2^k. Values, uint8: the mask 1 = tumour, 0 = not (or not computed); the uncertainty
round(255 * u / scale), 0 where nothing was computed, with the scale in the image description.

Memory: one grid row of patches at the model's mpp, and a 256-row band per level when the pyramid
is assembled from the level files written on the way (in a temp folder beside the output)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from ugafl.common.atomic import atomic_write
from ugafl.common.masks import tiff_resolution
from ugafl.common.slide import Slide

TILE = 256
MIN_SIDE = 256  # the pyramid stops before a level's short side drops below this


def overlay_downsample(slide_mpp: float, model_mpp: float) -> int:
    """2^k: the largest power of two whose level-0 pixels are not coarser than `model_mpp`."""
    return 2 ** max(0, int(math.floor(math.log2(max(model_mpp / slide_mpp, 1.0) * (1 + 1e-6)))))


class _Layer:
    """One overlay: level-0 rows appended to a raw file, then assembled into a pyramidal TIFF."""

    def __init__(self, path: Path, width: int, height: int, mpp: float, description: dict, reduce: str, tmp: Path):
        self.path, self.width, self.height, self.mpp = path, width, height, mpp
        self.description, self.reduce = description, reduce
        self.raw = tmp / f"{path.name}.level0.raw"
        self._handle = self.raw.open("wb")
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        rows = rows[: self.height - self.rows]
        rows.astype(np.uint8).tofile(self._handle)
        self.rows += len(rows)

    def finish(self) -> None:
        if self.rows < self.height:  # below the last patch row: nothing computed
            np.zeros((self.height - self.rows, self.width), np.uint8).tofile(self._handle)
            self.rows = self.height
        self._handle.close()
        levels = [(self.raw, self.width, self.height)]
        while min(levels[-1][1], levels[-1][2]) // 2 >= MIN_SIDE:
            src, w, h = levels[-1]
            dst = src.with_name(f"{self.path.name}.level{len(levels)}.raw")
            self._halve(src, w, h, dst)
            levels.append((dst, w // 2, h // 2))

        def write(tmp: Path) -> None:
            with tifffile.TiffWriter(tmp, bigtiff=self.width * self.height > 2**31) as tif:
                for i, (raw, w, h) in enumerate(levels):
                    tif.write(_tiles(raw, w, h), shape=(h, w), dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                              photometric="minisblack", subfiletype=0 if i == 0 else 1, metadata=None,
                              description=json.dumps(self.description) if i == 0 else None,
                              **tiff_resolution(self.mpp * self.width / w))

        atomic_write(self.path, write)

    def _halve(self, src: Path, w: int, h: int, dst: Path) -> None:
        with src.open("rb") as fin, dst.open("wb") as fout:
            for y in range(0, h // 2 * 2, 2 * TILE):
                n = min(2 * TILE, h // 2 * 2 - y)
                band = np.fromfile(fin, np.uint8, count=n * w).reshape(n, w)[:, : w // 2 * 2]
                quad = band.reshape(n // 2, 2, w // 2, 2)
                out = quad.max(axis=(1, 3)) if self.reduce == "max" else quad.mean(axis=(1, 3)).round()
                out.astype(np.uint8).tofile(fout)
            # an odd last row of the source is dropped with the half-pixel it would make


def _tiles(raw: Path, w: int, h: int) -> Iterator[np.ndarray]:
    """The level's tiles, row-major, read a 256-row band at a time."""
    with raw.open("rb") as handle:
        for y in range(0, h, TILE):
            n = min(TILE, h - y)
            band = np.zeros((TILE, math.ceil(w / TILE) * TILE), np.uint8)
            band[:n, :w] = np.fromfile(handle, np.uint8, count=n * w).reshape(n, w)
            for x in range(0, w, TILE):
                yield band[:, x : x + TILE]


class OverlayWriter:
    """Collects the streamed patches (`add`, in the stream's row-major order) and writes
    `<out>/tumour_overlay.tif` and `<out>/uncertainty_overlay.tif` at `close`."""

    def __init__(self, slide: Slide, model_mpp: float, patch_px: int, measure: str, scale: float, out_dir: Path):
        self.slide_mpp, self.model_mpp, self.p = slide.mpp, model_mpp, patch_px
        self.down = overlay_downsample(slide.mpp, model_mpp)
        self.mpp = slide.mpp * self.down
        w0, h0 = slide.dimensions
        self.width, self.height = max(1, w0 // self.down), max(1, h0 // self.down)
        self.cols = math.ceil(self.width * self.mpp / model_mpp) + patch_px
        self.measure, self.scale = measure, scale
        self.out_dir = out_dir
        # Collected beside out_dir, which is made only when the overlays are written: a slide that
        # fails half-way leaves no folder behind.
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.overlay-", dir=out_dir.parent))
        common = {"slide_mpp": slide.mpp, "downsample": self.down, "model_mpp": model_mpp}
        self.layers = {
            "mask": _Layer(out_dir / "tumour_overlay.tif", self.width, self.height, self.mpp,
                           {"ugafl": "predicted tumour", "values": "1 = tumour, 0 = not or not computed", **common}, "max", self._tmp),
            "uncertainty": _Layer(out_dir / "uncertainty_overlay.tif", self.width, self.height, self.mpp,
                                  {"ugafl": f"uncertainty ({measure})", "values": f"u = pixel / 255 * {scale:g}; 0 = not computed",
                                   "measure": measure, "scale": scale, **common}, "mean", self._tmp),
        }
        # Each overlay column's source column in a strip (nearest), the same for every row.
        self._xs = np.clip(((np.arange(self.width) + 0.5) * self.mpp / model_mpp).astype(int), 0, self.cols - 1)
        self._row = None  # the grid row being filled, at the model's mpp
        self._strips = {k: np.zeros((patch_px, self.cols), np.uint8) for k in self.layers}

    def add(self, batch) -> None:
        """One BatchUncertainty of final patches."""
        scale0 = self.model_mpp / self.slide_mpp  # level-0 px per model px
        for k, loc in enumerate(batch.locations):
            row = round(loc.y / (self.p * scale0))
            while self._row is None or row > self._row:
                self._flush_row()
            x = round(loc.x / scale0)
            if x < 0 or x >= self.cols:
                continue
            on = batch.tissue[k]
            values = {"mask": ((batch.prob[k] >= 0.5) & on).astype(np.uint8),
                      "uncertainty": np.where(on, np.clip(np.round(255 * batch.maps[self.measure][k] / self.scale), 1, 255), 0)}
            for name, value in values.items():
                part = value[:, : self.cols - x]
                self._strips[name][:, x : x + part.shape[1]] = part

    def _flush_row(self) -> None:
        """Writes the finished grid row (if any) as overlay rows, and moves to the next."""
        if self._row is not None:
            # Overlay rows whose centres fall in this grid row, sampled nearest from the strip.
            top_um, bottom_um = self._row * self.p * self.model_mpp, (self._row + 1) * self.p * self.model_mpp
            first, last = math.ceil(top_um / self.mpp - 0.5), math.ceil(bottom_um / self.mpp - 0.5)
            layer0 = next(iter(self.layers.values()))
            first = max(first, layer0.rows)
            if last > first:
                ys = np.clip((((np.arange(first, last) + 0.5) * self.mpp - top_um) / self.model_mpp).astype(int), 0, self.p - 1)
                for name, layer in self.layers.items():
                    if layer.rows < first:
                        layer.append(np.zeros((first - layer.rows, self.width), np.uint8))
                    layer.append(self._strips[name][ys][:, self._xs])
            for strip in self._strips.values():
                strip[:] = 0
        self._row = 0 if self._row is None else self._row + 1

    def close(self) -> list[Path]:
        """Finishes both overlays; returns their paths."""
        try:
            if self._row is not None:
                self._flush_row()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for layer in self.layers.values():
                layer.finish()
            return [layer.path for layer in self.layers.values()]
        finally:
            self.discard()

    def discard(self) -> None:
        """Drops what was collected (the slide failed): no overlay is written."""
        for layer in self.layers.values():
            if not layer._handle.closed:
                layer._handle.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def overlay_scale(measure: str) -> float:
    """The value an uncertainty overlay's 255 stands for: a Bernoulli variance's maximum for the
    predicted variance, else 2 ln 2 nats (twice the binary entropy's maximum; the UGA score and
    mutual information above it are clipped)."""
    return 0.25 if measure == "variance" else 2 * math.log(2)
