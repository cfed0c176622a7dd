"""The slides behind the review app's viewer: Deep Zoom tiles (OpenSlide's DeepZoomGenerator, the
format OpenSeadragon reads) of the slides the queue's patches come from, so a pathologist sees a
patch in its surrounding tissue down to the scanner's full resolution.

Frames: Deep Zoom's image is the slide's level 0 (`limit_bounds=False`), so image pixel (x, y)
is level-0 pixel (x, y), the frame of every queue item's box. Only slides with an item in the
queue are served, by the name the queue knows them by (the file's stem); a slide whose file is
not in the slides folder (or cannot be opened) is simply not offered, and the page shows the
patch alone."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from ugafl.common.errors import SlideError
from ugafl.common.log import get_logger
from ugafl.common.slide_files import openslide_path
from ugafl.common.slide_scan import NOT_SLIDES, candidate_files

log = get_logger("review")

TILE_SIZE, OVERLAP, JPEG_QUALITY = 254, 1, 85  # 256-px tiles with their overlap, as OpenSeadragon expects
OPEN_SLIDES = 4  # slides kept open at once


class SlideTiles:
    """Tiles and thumbnails of the slides in `folder` (None: no slides, patches only)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._open: OrderedDict[str, tuple[object, object]] = OrderedDict()  # stem -> (OpenSlide, generator)

    def _find(self, stem: str) -> Path | None:
        """The slide named `stem` in the folder (as the inbox lists slides: a DICOM series by its
        level-0 file, a slide's folder by its name), or a slide file a subfolder down."""
        if self.folder is None or not self.folder.is_dir():
            return None
        if stem not in self._paths:
            import openslide

            listed = [p for p in candidate_files(self.folder) if p.stem == stem]
            below = [p for d in sorted(self.folder.iterdir()) if d.is_dir() for p in sorted(d.iterdir())]
            for path in listed or below:
                if listed or (path.stem == stem and path.suffix.lower() not in NOT_SLIDES and path.is_file()
                              and openslide.OpenSlide.detect_format(str(path)) is not None):
                    self._paths[stem] = path
                    break
        return self._paths.get(stem)

    def _generator(self, stem: str):
        """The open slide's DeepZoomGenerator, or None when the slide is not there or not readable."""
        with self._lock:
            if stem in self._open:
                self._open.move_to_end(stem)
                return self._open[stem][1]
            path = self._find(stem)
            if path is None:
                return None
            import openslide
            from openslide.deepzoom import DeepZoomGenerator

            try:
                slide = openslide.OpenSlide(str(openslide_path(path)))
            except (openslide.OpenSlideError, SlideError) as error:
                log.warning("%s: cannot be opened for the viewer (%s)", path, error)
                return None
            generator = DeepZoomGenerator(slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
            self._open[stem] = (slide, generator)
            while len(self._open) > OPEN_SLIDES:
                old, _ = self._open.popitem(last=False)[1]
                old.close()
            return generator

    def available(self, stem: str) -> bool:
        return self._generator(stem) is not None

    def dzi(self, stem: str) -> str | None:
        """The slide's Deep Zoom descriptor (XML), or None."""
        generator = self._generator(stem)
        return None if generator is None else generator.get_dzi("jpeg")

    def tile(self, stem: str, level: int, col: int, row: int) -> bytes | None:
        """One JPEG tile, or None when the slide or the tile address does not exist."""
        generator = self._generator(stem)
        if generator is None or not 0 <= level < generator.level_count:
            return None
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        image = generator.get_tile(level, (col, row))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()

    def close(self) -> None:
        with self._lock:
            for slide, _ in self._open.values():
                slide.close()
            self._open.clear()
