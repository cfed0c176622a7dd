"""ASAP XML exchange (the Camelyon annotation format), level-0 slide pixels (x right, y down).

A file is for one slide. Tumour outlines are Polygon annotations in a tumour group
(`geometry.TUMOUR_CLASSES`: "Tumor", Camelyon16's "_0"/"_1", Camelyon17's "metastases") or in no
group; holes are polygons in the "Exclusion" group (Camelyon16: "_2") and are subtracted from the
tumour polygon that contains them; every other group (Stroma, ...) is skipped, as QuPath classes
are. Export writes per item a "Region" Rectangle named "ugafl item <id>", exteriors as
"ugafl item <id> part <k>" (group Tumor) and holes as "ugafl item <id> part <k> hole <m>" (group
Exclusion), and the slide's name as the root's `ugafl_slide` attribute (ASAP drops it when it
saves the file again; the file's name, the slide's, then says which slide it is for). The model's
outline goes out in the group "ugafl model" (holes: "ugafl model hole"), a suggestion that is
never imported: move its parts to Tumor (and the holes to Exclusion) to accept it. A region moved
to the group Negative says the patch holds no tumour.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ugafl.client.annotations.geometry import (MODEL_CLASS, NEGATIVE_CLASS, TUMOUR_CLASS, TUMOUR_CLASSES, AnnotationError, Box, ExportPatch, ParsedFile, Polygon,
                                      as_export_patches, assign_parsed, atomic_write_bytes, check_box, close_ring,
                                      is_tumour_class, mask_to_polygons, ring_bounds, ring_inside, signed_area)

TUMOUR_GROUP, EXCLUSION_GROUP, REGION_GROUP = "Tumor", "Exclusion", "Region"
MODEL_GROUP, MODEL_HOLE_GROUP = MODEL_CLASS, f"{MODEL_CLASS} hole"
EXCLUSION_GROUPS = {"exclusion", "_2"}
GROUP_COLOURS = {TUMOUR_GROUP: "#F4FA58", EXCLUSION_GROUP: "#64FE2E", REGION_GROUP: "#0000B4", MODEL_GROUP: "#00E5FF",
                 MODEL_HOLE_GROUP: "#007F8C", NEGATIVE_CLASS: "#8C8C8C"}
_REGION_NAME = re.compile(r"^\s*ugafl item (\d+)\s*$")
_ITEM_NAME = re.compile(r"^\s*ugafl item (\d+)\b")


def _annotation(parent: ET.Element, name: str, group: str, kind: str, points: np.ndarray) -> None:
    ann = ET.SubElement(parent, "Annotation", Name=name, Type=kind, PartOfGroup=group, Color=GROUP_COLOURS[group])
    coords = ET.SubElement(ann, "Coordinates")
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]  # ASAP rings are implicitly closed
    for order, (x, y) in enumerate(points):
        ET.SubElement(coords, "Coordinate", Order=str(order), X=f"{float(x):.3f}", Y=f"{float(y):.3f}")


def export_items(items: Iterable[ExportPatch | tuple], path: str | Path, slide: str | None = None,
                 contour_class: str = MODEL_CLASS) -> Path:
    """Write an ASAP XML file for `items` (ExportPatch or (item_id, box, mask, ...)) of one slide
    (its name in the queue, written as the root's `ugafl_slide`); the masks' outlines go in the
    group `contour_class` (the model's suggestion by default; Tumor for corrections); atomic."""
    tumour = contour_class == TUMOUR_CLASS
    part_group, hole_group = (TUMOUR_GROUP, EXCLUSION_GROUP) if tumour else (MODEL_GROUP, MODEL_HOLE_GROUP)
    root = ET.Element("ASAP_Annotations", **({"ugafl_slide": slide} if slide else {}))
    annotations = ET.SubElement(root, "Annotations")
    for item in as_export_patches(items):
        x, y, w, h = check_box(item.box, f"item {item.item_id}")
        rect = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        _annotation(annotations, f"ugafl item {item.item_id}", REGION_GROUP, "Rectangle", rect)
        for k, (exterior, holes) in enumerate(mask_to_polygons(item.mask, (x, y, w, h))):
            _annotation(annotations, f"ugafl item {item.item_id} part {k}", part_group, "Polygon", exterior)
            for m, hole in enumerate(holes):
                _annotation(annotations, f"ugafl item {item.item_id} part {k} hole {m}", hole_group, "Polygon", hole)
    groups = ET.SubElement(root, "AnnotationGroups")
    for name, colour in GROUP_COLOURS.items():
        group = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=colour)
        ET.SubElement(group, "Attributes")
    ET.indent(root)
    return atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _coordinates(ann: ET.Element, where: str) -> np.ndarray:
    coords = ann.find("Coordinates")
    if coords is None or len(coords.findall("Coordinate")) == 0:
        raise AnnotationError(f"{where}: has no Coordinates")
    points = []
    for k, c in enumerate(coords.findall("Coordinate")):
        try:
            x, y = float(c.attrib["X"].replace(",", ".")), float(c.attrib["Y"].replace(",", "."))
            order = float(c.attrib.get("Order", k))
        except KeyError as exc:
            raise AnnotationError(f"{where}: coordinate {k} has no {exc.args[0]} attribute") from None
        except ValueError:
            raise AnnotationError(f"{where}: coordinate {k} has a non-numeric value "
                                  f"(X={c.attrib.get('X')!r}, Y={c.attrib.get('Y')!r}, Order={c.attrib.get('Order')!r})") from None
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(order)):
            raise AnnotationError(f"{where}: coordinate {k} is not finite")
        points.append((order, k, x, y))
    points.sort()
    ring = close_ring(np.array([(x, y) for _, _, x, y in points], dtype=float))
    if len(np.unique(ring, axis=0)) < 3:
        raise AnnotationError(f"{where}: a polygon needs at least 3 distinct points, got {len(np.unique(ring, axis=0))}")
    return ring


def import_corrections(path: str | Path, boxes: dict[int, Box] | None = None,
                       shapes: dict[int, tuple[int, int]] | None = None,
                       tumour_classes: tuple[str, ...] = TUMOUR_CLASSES,
                       warnings: list[str] | None = None) -> dict[int, list[Polygon]]:
    """Tumour polygons (with holes) per item id from an ASAP XML file (see `parse` and
    `geometry.assign_parsed`: a polygon named "ugafl item <id> ..." belongs to that item, others to
    every item whose patch holds them; one reaching past its patch is clipped, with a line in
    `warnings`)."""
    return assign_parsed(parse(path, tumour_classes), boxes, shapes, str(path), warnings)


def parse(path: str | Path, tumour_classes: tuple[str, ...] = TUMOUR_CLASSES) -> ParsedFile:
    """The regions, tumour polygons and named slide of an ASAP XML file. Exclusion polygons become
    holes of the innermost tumour polygon containing them (dropped when none does); annotations in
    other groups are skipped."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    slide = root.attrib.get("ugafl_slide", "").strip()
    regions: dict[int, Box] = {}
    negatives: set[int] = set()
    tumour: list[tuple[str, np.ndarray, int | None]] = []
    exclusions: list[tuple[str, np.ndarray]] = []
    for index, ann in enumerate(root.iter("Annotation")):
        name = ann.attrib.get("Name", "")
        label = f"annotation {index} ({name})" if name else f"annotation {index}"
        where = f"{path} {label}"
        group = ann.attrib.get("PartOfGroup", "None")
        kind = ann.attrib.get("Type", "Polygon")
        match = _ITEM_NAME.match(name)
        item_id = int(match.group(1)) if match else None
        negative = group.lower() == NEGATIVE_CLASS.lower() and bool(_REGION_NAME.match(name))
        if group == REGION_GROUP or negative:
            if negative:
                negatives.add(item_id)
            if item_id is not None:
                x0, y0, x1, y1 = ring_bounds(_coordinates(ann, where))
                if x1 <= x0 or y1 <= y0:
                    raise AnnotationError(f"{where}: region of item {item_id} has no area")
                regions.setdefault(item_id, (x0, y0, x1 - x0, y1 - y0))
            continue
        excluded = group.lower() in EXCLUSION_GROUPS
        if not excluded and not is_tumour_class(group, tumour_classes):
            continue  # another group (Stroma, ...): not tumour
        if kind not in ("Polygon", "Spline", "Rectangle"):
            raise AnnotationError(f"{where}: type {kind} cannot be a correction; draw an area (Polygon)")
        ring = _coordinates(ann, where)
        if excluded:
            exclusions.append((label, ring))
        else:
            tumour.append((label, ring, item_id))
    holes: list[list[np.ndarray]] = [[] for _ in tumour]
    for label, ring in exclusions:
        parents = [k for k, (_, exterior, _) in enumerate(tumour) if ring_inside(ring, exterior)]
        if parents:
            innermost = min(parents, key=lambda k: abs(signed_area(tumour[k][1])))
            holes[innermost].append(ring)
    polygons = [(label, (exterior, holes[k]), item_id) for k, (label, exterior, item_id) in enumerate(tumour)]
    return ParsedFile(regions, polygons, {slide} if slide else set(), negatives)
