"""QuPath GeoJSON exchange: export queue items for review in QuPath, import the corrections back.

All coordinates are level-0 slide pixels (x right, y down), as QuPath writes them. A file is for
one slide: export writes, per item, a locked "Region*" rectangle named "ugafl item <id>" (the
patch) and the model's tumour outline as "ugafl model" annotations (Polygon with holes; a
suggestion, never imported: set its class to Tumor to accept it), each with
properties.metadata.ugafl_item and .ugafl_slide (QuPath keeps an object's metadata through its
own GeoJSON export). A region whose class is set to Negative says the patch holds no tumour. Import reads QuPath 0.4/0.5 exports with or without classification/metadata,
with or without a UTF-8 byte-order mark.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ugafl.client.annotations.geometry import (MODEL_CLASS, MODEL_COLOUR, NEGATIVE_CLASS, REGION_CLASS, REGION_COLOUR,
                                      TUMOUR_CLASS, TUMOUR_CLASSES, TUMOUR_COLOUR, AnnotationError, Box, ExportPatch, ParsedFile, Polygon, as_export_patches,
                                      assign_parsed, atomic_write_bytes, check_box, is_tumour_class,
                                      mask_to_polygons, ring_bounds)

_ITEM_NAME = re.compile(r"^\s*ugafl item (\d+)\s*$")


def _ring_json(ring: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in ring]


def _rect_ring(box: Box) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]


def export_items(items: Iterable[ExportPatch | tuple], path: str | Path, slide: str | None = None,
                 contour_class: str = MODEL_CLASS) -> Path:
    """Write a QuPath-importable FeatureCollection for `items` (ExportPatch or (item_id, box, mask, ...))
    of one slide; `slide` (its name in the queue) goes into every feature's metadata; the masks'
    outlines get `contour_class` (the model's suggestion by default; Tumor for corrections)."""
    colour = TUMOUR_COLOUR if contour_class == TUMOUR_CLASS else MODEL_COLOUR
    features: list[dict[str, Any]] = []
    named = {"ugafl_slide": slide} if slide else {}
    for item in as_export_patches(items):
        box = check_box(item.box, f"item {item.item_id}")
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_rect_ring(box)]},
            "properties": {"objectType": "annotation", "name": f"ugafl item {item.item_id}", "isLocked": True,
                           "classification": {"name": REGION_CLASS, "color": list(REGION_COLOUR)},
                           "metadata": {"ugafl_item": str(item.item_id), "ugafl_role": "region", **named}},
        })
        for k, (exterior, holes) in enumerate(mask_to_polygons(item.mask, box)):
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [_ring_json(exterior)] + [_ring_json(h) for h in holes]},
                "properties": {"objectType": "annotation", "name": f"ugafl item {item.item_id} tumour {k}",
                               "classification": {"name": contour_class, "color": list(colour)},
                               "metadata": {"ugafl_item": str(item.item_id), **named}},
            })
    data = json.dumps({"type": "FeatureCollection", "features": features}, indent=1).encode("utf-8")
    return atomic_write_bytes(path, data)


# ---------------------------------------------------------------------- import

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def _ring(raw: Any, where: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise AnnotationError(f"{where}: a ring must be a list of [x, y] positions, got {type(raw).__name__}")
    points = []
    for k, pos in enumerate(raw):
        if not isinstance(pos, list) or len(pos) < 2:
            raise AnnotationError(f"{where}: position {k} must be [x, y], got {str(pos)[:40]}")
        x, y = _number(pos[0]), _number(pos[1])
        if x is None or y is None:
            raise AnnotationError(f"{where}: position {k} has non-numeric or non-finite coordinates {str(pos)[:40]}")
        points.append((x, y))
    if len(points) < 4:
        raise AnnotationError(f"{where}: a ring needs at least 4 positions (closed triangle), got {len(points)}")
    if points[0] != points[-1]:
        raise AnnotationError(f"{where}: ring is not closed (first {points[0]} != last {points[-1]})")
    return np.asarray(points, dtype=float)


def _polygon(raw: Any, where: str) -> Polygon:
    if not isinstance(raw, list) or not raw:
        raise AnnotationError(f"{where}: Polygon coordinates must be a non-empty list of rings")
    rings = [_ring(r, f"{where} ring {k}") for k, r in enumerate(raw)]
    return rings[0], rings[1:]


def _geometry_polygons(geometry: Any, where: str) -> list[Polygon]:
    if not isinstance(geometry, dict):
        raise AnnotationError(f"{where}: has no geometry object")
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        return [_polygon(coords, where)]
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise AnnotationError(f"{where}: MultiPolygon coordinates must be a non-empty list of polygons")
        return [_polygon(p, f"{where} part {k}") for k, p in enumerate(coords)]
    raise AnnotationError(f"{where}: geometry is {str(kind)[:40]}, only Polygon and MultiPolygon can be corrections; "
                          f"draw the tumour as an area (brush, wand or polygon tool)")


def _item_ref(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise AnnotationError(f"{where}: metadata ugafl_item must be an item id, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise AnnotationError(f"{where}: metadata ugafl_item must be an item id, got {str(value)[:40]!r}")


def _class_name(props: dict, where: str) -> str | None:
    cls = props.get("classification")
    if cls is None:
        return None
    if isinstance(cls, str):
        return cls
    if isinstance(cls, dict):
        name = cls.get("name")
        if name is None or isinstance(name, str):
            return name
    raise AnnotationError(f"{where}: classification must be {{\"name\": ...}}, got {str(cls)[:40]}")


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is fine
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not UTF-8 text; expected a GeoJSON export") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (RecursionError, ValueError) as exc:
        raise AnnotationError(f"{path}: invalid JSON ({type(exc).__name__})") from None


def import_corrections(path: str | Path, boxes: dict[int, Box] | None = None,
                       shapes: dict[int, tuple[int, int]] | None = None,
                       tumour_classes: tuple[str, ...] = TUMOUR_CLASSES,
                       warnings: list[str] | None = None) -> dict[int, list[Polygon]]:
    """Tumour polygons per item id from a QuPath GeoJSON export (see `parse` and
    `geometry.assign_parsed`: a polygon belongs to the item its metadata names, else to every item
    whose patch holds it; one reaching past its patch is clipped, with a line in `warnings`)."""
    return assign_parsed(parse(path, tumour_classes), boxes, shapes, str(path), warnings)


def parse(path: str | Path, tumour_classes: tuple[str, ...] = TUMOUR_CLASSES) -> ParsedFile:
    """The regions, tumour polygons and named slides of a QuPath GeoJSON export.

    Tumour = Polygon/MultiPolygon annotations with no classification or a class in
    `tumour_classes` (without case); other classes and non-annotation objects (detections, cells)
    are skipped. Regions: "Region*" rectangles naming a ugafl item. Slides: every
    metadata.ugafl_slide in the file."""
    path = Path(path)
    data = _load(path)
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        got = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection, got {str(got)[:40]}; "
                              f"export with File > Export objects as GeoJSON (as a FeatureCollection)")
    features = data.get("features")
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: FeatureCollection has no features list")
    regions: dict[int, Box] = {}
    negatives: set[int] = set()
    slides: set[str] = set()
    tumour: list[tuple[str, Polygon, int | None]] = []
    for index, feature in enumerate(features):
        label = f"feature {index}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationError(f"{path} {label}: not a GeoJSON Feature")
        props = feature.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise AnnotationError(f"{path} {label}: properties must be an object")
        name = props.get("name")
        if isinstance(name, str) and name:
            label = f"{label} ({name[:40]})"
        where = f"{path} {label}"
        object_type = props.get("objectType", "annotation")
        if object_type != "annotation":
            continue  # detections, cells, tiles: not annotations a pathologist drew
        class_name = _class_name(props, where)
        metadata = props.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise AnnotationError(f"{where}: metadata must be an object")
        metadata = metadata or {}
        slide = metadata.get("ugafl_slide")
        if slide is not None:
            if not isinstance(slide, str) or not slide.strip():
                raise AnnotationError(f"{where}: metadata ugafl_slide must be a slide name, got {str(slide)[:40]!r}")
            slides.add(slide.strip())
        negative = class_name is not None and class_name.lower() == NEGATIVE_CLASS.lower()
        is_region = (class_name is not None and class_name.rstrip("*").lower() == "region") \
            or metadata.get("ugafl_role") == "region" or (negative and isinstance(name, str) and bool(_ITEM_NAME.match(name)))
        if is_region:
            item_id = _item_ref(metadata.get("ugafl_item"), where)
            if item_id is None and isinstance(name, str) and _ITEM_NAME.match(name):
                item_id = int(_ITEM_NAME.match(name).group(1))
            if item_id is None:
                continue  # someone else's region: not ours
            if negative:
                negatives.add(item_id)
            polygons = _geometry_polygons(feature.get("geometry"), where)
            x0, y0, x1, y1 = ring_bounds(polygons[0][0])
            if x1 <= x0 or y1 <= y0:
                raise AnnotationError(f"{where}: region of item {item_id} has no area")
            regions.setdefault(item_id, (x0, y0, x1 - x0, y1 - y0))
            continue
        if not is_tumour_class(class_name, tumour_classes):
            continue  # another class (stroma, ignore, ...): not tumour
        item_id = _item_ref(metadata.get("ugafl_item"), where)
        for k, polygon in enumerate(_geometry_polygons(feature.get("geometry"), where)):
            tumour.append((label if k == 0 else f"{label} part {k}", polygon, item_id))
    return ParsedFile(regions, tumour, slides, negatives)
