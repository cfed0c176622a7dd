"""The queue's round trips with pathologists' tools: export items (patch region and the model's
contour, level-0 pixels) as QuPath GeoJSON or ASAP XML; import corrected annotations from either,
or a PNG mask for one item. An import is all or nothing: every target item is checked and every
mask built first, then all are committed in one transaction, so neither a bad file nor a crash
leaves a file half imported."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ugafl.client.annotations import asap_xml, qupath_geojson
from ugafl.client.annotations.geometry import AnnotationError, ExportPatch, import_png_mask, polygons_to_mask
from ugafl.client.queue.store import CorrectionQueue, QueueError

FORMATS = {"geojson": qupath_geojson, "asap": asap_xml}
OPEN_STATES = ("pending", "in_review")


def export_queue(workspace: str | Path, path: str | Path, fmt: str, state: str = "pending") -> int:
    """Writes the items in `state` to `path` in `fmt` ("geojson" or "asap"); returns how many."""
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown annotation format {fmt!r}; known: {', '.join(FORMATS)}")
    with CorrectionQueue(workspace) as queue:
        items = queue.list(state)
        patches = [ExportPatch(item.id, item.box, queue.load_model_mask(item.id)) for item in items]
    FORMATS[fmt].export_items(patches, path)
    return len(patches)


def _shape(queue: CorrectionQueue, item_id: int) -> tuple[int, int]:
    return tuple(queue.load_image(item_id).shape[:2])


def import_file(workspace: str | Path, path: str | Path, fmt: str, who: str, item_id: int | None = None) -> list[int]:
    """Submits the corrections in `path` (`fmt`: geojson, asap, or png with `item_id`) as `who`'s;
    returns the corrected item ids. Nothing is submitted unless every correction fits its item."""
    path = Path(path)
    with CorrectionQueue(workspace) as queue:
        if fmt == "png":
            if item_id is None:
                raise AnnotationError(f"{path}: a PNG mask is for one item: give its id (--item)")
            masks = {item_id: import_png_mask(path, _shape(queue, _open_item(queue, item_id, path).id))}
        elif fmt in FORMATS:
            open_items = {i.id: i for s in OPEN_STATES for i in queue.list(s)}
            boxes = {i: item.box for i, item in open_items.items()}
            shapes = {i: _shape(queue, i) for i in open_items}
            polygons = FORMATS[fmt].import_corrections(path, boxes, shapes)
            if not polygons:
                raise AnnotationError(f"{path}: no annotation in it belongs to an open queue item")
            masks = {}
            for target, polys in sorted(polygons.items()):
                item = _open_item(queue, target, path)
                masks[target] = polygons_to_mask(polys, item.box, shapes.get(target) or _shape(queue, target))
        else:
            raise AnnotationError(f"unknown annotation format {fmt!r}; known: geojson, asap, png")
        queue.submit_corrections({t: m.astype(np.uint8) for t, m in masks.items()}, who)  # one transaction
    return sorted(masks)


def _open_item(queue: CorrectionQueue, item_id: int, path: Path):
    """The item, if it exists and still awaits a correction; else one clear error naming both."""
    try:
        item = queue.get(item_id)
    except QueueError:
        raise QueueError(f"{path}: names item {item_id}, which is not in the queue") from None
    if item.state not in OPEN_STATES:
        raise QueueError(f"{path}: item {item_id} is already {item.state}; nothing was imported")
    return item
