"""The queue's round trips with pathologists' tools, one file per slide: export a slide's items
(patch region and the model's contour, level-0 pixels) as QuPath GeoJSON or ASAP XML, named for
the slide and naming it inside. The model's contour is a suggestion in its own class ("ugafl
model"), never imported: a patch counts as corrected only when tumour is drawn in it (or the
suggestion is set to Tumor) or its region is marked Negative, so a patch nobody looked at stays
open. Corrected items export their correction, as Tumor; import corrected annotations from either, or a PNG mask for one
item. An import is for one slide and touches only that slide's items: a file that names no slide
(inside, by `slide=`, or by its file name) or names items of another slide is refused. An import
is all or nothing: every target item is checked and every mask built first, then all are
committed in one transaction, so neither a bad file nor a crash leaves a file half imported."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ugafl.client.annotations import asap_xml, qupath_geojson
from ugafl.client.annotations.geometry import (MODEL_CLASS, NEGATIVE_CLASS, TUMOUR_CLASS, TUMOUR_CLASSES, AnnotationError,
                                               ExportPatch, ParsedFile, assign_parsed, import_png_mask, polygons_to_mask)
from ugafl.client.queue.items import Item
from ugafl.client.queue.store import CorrectionQueue, QueueError

log = logging.getLogger(__name__)

FORMATS = {"geojson": qupath_geojson, "asap": asap_xml}
SUFFIXES = {"geojson": ".geojson", "asap": ".xml"}
OPEN_STATES = ("pending", "in_review")


@dataclass(frozen=True)
class Exported:
    """One file written: the slide it is for, where, and how many items it holds."""

    slide: str
    path: Path
    items: int


@dataclass(frozen=True)
class Imported:
    """An import: the slide it was for, the items corrected, and what was clipped on the way."""

    slide: str
    ids: list[int]
    warnings: list[str] = field(default_factory=list)


def export_path(out_dir: Path, slide: str, fmt: str) -> Path:
    """`out_dir/<slide><suffix>`: the file a slide's items go to (QuPath and ASAP name annotation
    files after their slide)."""
    return Path(out_dir) / f"{slide}{SUFFIXES[fmt]}"


def export_queue(workspace: str | Path, out_dir: str | Path, fmt: str, state: str = "pending",
                 slide: str | None = None) -> list[Exported]:
    """Writes the items in `state` to one file per slide in `out_dir` (made if missing; its parent
    must exist), or only `slide`'s; returns what was written, by slide."""
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown annotation format {fmt!r}; known: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AnnotationError(f"--out {out_dir}: is a file; give a folder (one file per slide is written in it)")
    if not out_dir.parent.is_dir():
        raise AnnotationError(f"--out {out_dir}: its parent folder {out_dir.parent} does not exist")
    with CorrectionQueue(workspace) as queue:
        by_slide: dict[str, list[ExportPatch]] = defaultdict(list)
        for item in queue.list(state):
            if slide is None or item.slide == slide:
                mask = queue.load_correction(item.id) if state == "corrected" else queue.load_model_mask(item.id)
                by_slide[item.slide].append(ExportPatch(item.id, item.box, mask))
        if slide is not None and slide not in by_slide:
            slides = sorted({i.slide for i in queue.list(state)})
            raise AnnotationError(f"--slide {slide}: no item in state {state} is on it "
                                  f"(slides with such items: {', '.join(slides) or 'none'})")
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, patches in sorted(by_slide.items()):
        path = FORMATS[fmt].export_items(patches, export_path(out_dir, name, fmt), slide=name,
                                         contour_class=TUMOUR_CLASS if state == "corrected" else MODEL_CLASS)
        written.append(Exported(name, path, len(patches)))
    return written


def _shape(queue: CorrectionQueue, item_id: int) -> tuple[int, int]:
    return tuple(queue.load_image(item_id).shape[:2])


def file_slide(path: Path, parsed: ParsedFile, given: str | None, slides: set[str]) -> str:
    """The slide an annotation file is for: `given` (the user's --slide), else the one the file
    names inside, else the file's name when it is a slide of the queue (`slides`). Refused when
    none says, or when they disagree."""
    if len(parsed.slides) > 1:
        raise AnnotationError(f"{path}: names several slides ({', '.join(sorted(parsed.slides))}); "
                              f"a file holds one slide's corrections")
    inside = next(iter(parsed.slides), None)
    if given is not None and inside is not None and given != inside:
        raise AnnotationError(f"{path}: is for slide {inside}, not {given} (--slide)")
    found = given or inside or (path.stem if path.stem in slides else None)
    if found is None:
        raise AnnotationError(f"{path}: does not say which slide it is for; name it with --slide "
                              f"(slides in the queue: {', '.join(sorted(slides)) or 'none'})")
    return found


def import_file(workspace: str | Path, path: str | Path, fmt: str, who: str, item_id: int | None = None,
                slide: str | None = None, tumour_classes: tuple[str, ...] = TUMOUR_CLASSES) -> Imported:
    """Submits the corrections in `path` (`fmt`: geojson, asap, or png with `item_id`) as `who`'s.
    Nothing is submitted unless every correction fits an item of the file's slide."""
    path = Path(path)
    with CorrectionQueue(workspace) as queue:
        if fmt == "png":
            if item_id is None:
                raise AnnotationError(f"{path}: a PNG mask is for one item: give its id (--item)")
            item = _open_item(queue, item_id, path)
            if slide is not None and item.slide != slide:
                raise AnnotationError(f"{path}: item {item_id} is on slide {item.slide}, not {slide} (--slide)")
            masks = {item_id: import_png_mask(path, _shape(queue, item.id))}
            result = Imported(item.slide, [item_id])
        elif fmt in FORMATS:
            parsed = FORMATS[fmt].parse(path, tumour_classes)
            every = queue.list()
            target = file_slide(path, parsed, slide, {i.slide for i in every})
            _refuse_other_slides(path, parsed, target, {i.id: i for i in every})
            open_items = {i.id: i for s in OPEN_STATES for i in queue.list(s) if i.slide == target}
            if not open_items and not parsed.regions:
                raise AnnotationError(f"{path}: slide {target} has no item awaiting a correction")
            shapes = {i: _shape(queue, i) for i in open_items}
            warnings: list[str] = []
            polygons = assign_parsed(parsed, {i: item.box for i, item in open_items.items()}, shapes, str(path),
                                     warnings)
            if not polygons:
                raise AnnotationError(f"{path}: nothing in it is a correction for slide {target}: draw tumour in a "
                                      f"patch (or set the model's '{MODEL_CLASS}' outline to {TUMOUR_CLASS}), or mark a "
                                      f"patch's region {NEGATIVE_CLASS} when it holds no tumour")
            masks = {}
            for item_id_, polys in sorted(polygons.items()):
                item = _open_item(queue, item_id_, path)
                masks[item_id_] = polygons_to_mask(polys, item.box, shapes.get(item_id_) or _shape(queue, item_id_))
            for line in warnings:
                log.warning("%s", line)
            result = Imported(target, sorted(masks), warnings)
        else:
            raise AnnotationError(f"unknown annotation format {fmt!r}; known: geojson, asap, png")
        queue.submit_corrections({t: m.astype(np.uint8) for t, m in masks.items()}, who)  # one transaction
    return result


def _refuse_other_slides(path: Path, parsed: ParsedFile, slide: str, items: dict[int, Item]) -> None:
    """An item the file names (a region, or a polygon's ugafl_item) must be on the file's slide."""
    named = set(parsed.regions) | {i for _, _, i in parsed.tumour if i is not None}
    for item_id in sorted(named):
        item = items.get(item_id)
        if item is not None and item.slide != slide:
            raise AnnotationError(f"{path}: names item {item_id}, which is on slide {item.slide}; this file is for "
                                  f"slide {slide}, so nothing was imported")


def _open_item(queue: CorrectionQueue, item_id: int, path: Path) -> Item:
    """The item, if it exists and still awaits a correction; else one clear error naming both."""
    try:
        item = queue.get(item_id)
    except QueueError:
        raise QueueError(f"{path}: names item {item_id}, which is not in the queue") from None
    if item.state not in OPEN_STATES:
        raise QueueError(f"{path}: item {item_id} is already {item.state}; nothing was imported")
    return item
