"""Geometry shared by the annotation exchange formats (QuPath GeoJSON, ASAP XML, PNG masks).

Coordinate frames:
- A *box* is a queue item's patch region, (x, y, width, height) in level-0 slide pixels.
- A patch *mask* is bool (H, W); patch pixel (i, j) covers level-0
  x in [box.x + j * width / W, box.x + (j + 1) * width / W), likewise y with i, height, H.
  Its centre is at x = box.x + (j + 0.5) * width / W.
- A *ring* is a closed (first == last) float array (K, 2) of level-0 (x, y) vertices.
- A *Polygon* is (exterior ring, [hole rings]). Rasterising takes the pixels whose centre lies
  inside the exterior and outside every hole, so mask -> polygons -> mask is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from ugafl.common.atomic import atomic_write_bytes  # noqa: F401  (the format modules write through it)
from skimage.draw import polygon as draw_polygon
from skimage.measure import approximate_polygon, find_contours, points_in_poly

from ugafl.common.errors import UgaflError

Ring = np.ndarray  # (K, 2) float, level-0 (x, y), closed
Polygon = tuple[np.ndarray, list[np.ndarray]]  # (exterior, holes)
Box = tuple[float, float, float, float]  # level-0 (x, y, width, height)

TUMOUR_CLASS = "Tumor"
# Exported model contours carry this class (QuPath) or group (ASAP), which is never imported: a
# patch counts as corrected only when the pathologist drew tumour in it (or reclassified the
# model's contour as Tumor) or marked its region NEGATIVE_CLASS. An untouched patch stays open.
MODEL_CLASS = "ugafl model"
NEGATIVE_CLASS = "Negative"
MODEL_COLOUR = (0, 229, 255)
# The classes (QuPath) or groups (ASAP) imported as tumour, compared without case: the Camelyon
# convention ("Tumor"; Camelyon16's "_0" and "_1", Camelyon17's "metastases") and its spelling
# "Tumour". An annotation without a class (QuPath) or group (ASAP "None") counts as tumour too: it
# was drawn in a patch ugafl asked about. Every other class (Stroma, Other, ...) is skipped.
TUMOUR_CLASSES = ("Tumor", "Tumour", "metastases", "_0", "_1")
UNCLASSIFIED = {"", "none"}
REGION_CLASS = "Region*"
TUMOUR_COLOUR = (200, 0, 0)
REGION_COLOUR = (0, 0, 180)


class AnnotationError(UgaflError):
    """An annotation file or mask that cannot be used; the message names the file and the feature."""


def is_tumour_class(name: str | None, tumour_classes: Iterable[str] = TUMOUR_CLASSES) -> bool:
    """Whether an annotation of class (group) `name` is imported as tumour; None is unclassified."""
    if name is None or name.strip().lower() in UNCLASSIFIED:
        return True
    return name.strip().lower() in {c.strip().lower() for c in tumour_classes}


@dataclass(frozen=True)
class ParsedFile:
    """What an annotation file holds for the queue: the items' region rectangles it names
    (item id -> level-0 box), the tumour polygons as (label, polygon, named item id or None), the
    slides it says it is for (empty when it names none), and the items marked tumour-free."""

    regions: dict[int, Box]
    tumour: list[tuple[str, Polygon, int | None]]
    slides: set[str]
    negatives: set[int] = frozenset()  # items whose region the pathologist marked Negative: no tumour


@dataclass(frozen=True)
class ExportPatch:
    """One queue item to export: its id, level-0 box and the model's bool (H, W) patch mask."""

    item_id: int
    box: Box
    mask: np.ndarray


def as_export_patches(items: Iterable[Any]) -> list[ExportPatch]:
    """Accept ExportPatch objects or tuples (item_id, box, mask, *ignored)."""
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, ExportPatch):
            try:
                item_id, box, mask = item[0], item[1], item[2]
            except (TypeError, IndexError, KeyError):
                raise AnnotationError(f"export item {k}: expected (item_id, box, mask), got {type(item).__name__}") from None
            item = ExportPatch(int(item_id), check_box(box, f"export item {item_id}"), np.asarray(mask))
        if item.mask.ndim != 2 or 0 in item.mask.shape:
            raise AnnotationError(f"item {item.item_id}: mask must be 2-D (height, width), got shape {item.mask.shape}")
        out.append(item)
    return out


def check_box(box: Any, what: str) -> Box:
    """A level-0 (x, y, width, height) of finite numbers with positive width and height."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise AnnotationError(f"{what}: box must be (x, y, width, height), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise AnnotationError(f"{what}: box {box!r} needs finite values and positive width and height")
    return (x, y, w, h)


def describe_box(box: Box) -> str:
    x, y, w, h = box
    return f"x {x:g}-{x + w:g}, y {y:g}-{y + h:g}"


def close_ring(points: np.ndarray) -> np.ndarray:
    """The ring with its first vertex repeated at the end (when it is not already)."""
    points = np.asarray(points, dtype=float)
    if len(points) and not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring in its own units (positive when counter-clockwise in x-right/y-up)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def polygon_area(polygon: Polygon) -> float:
    """Exterior area minus hole areas (level-0 pixels squared)."""
    exterior, holes = polygon
    return abs(signed_area(exterior)) - sum(abs(signed_area(h)) for h in holes)


def ring_bounds(ring: np.ndarray) -> tuple[float, float, float, float]:
    """(min x, min y, max x, max y)."""
    return float(ring[:, 0].min()), float(ring[:, 1].min()), float(ring[:, 0].max()), float(ring[:, 1].max())


def ring_inside(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether `inner`'s vertices lie inside `outer` (majority vote: robust to a vertex on the edge)."""
    inside = points_in_poly(inner[:-1] if len(inner) > 1 else inner, outer)
    return bool(inside.mean() > 0.5)


def _oriented(ring: np.ndarray, ccw: bool) -> np.ndarray:
    return ring if (signed_area(ring) > 0) == ccw else ring[::-1].copy()


# ---------------------------------------------------------------------- mask <-> polygons

def mask_to_polygons(mask: np.ndarray, box: Box) -> list[Polygon]:
    """Polygons (with holes) outlining the foreground of a bool (H, W) patch mask, level-0 (x, y).

    Contours run through the midpoints between foreground and background pixel centres, so
    rasterising them with polygons_to_mask gives the mask back. Exteriors are counter-clockwise and
    holes clockwise in x/y numbers (GeoJSON's right-hand rule); foreground islands inside a hole are
    polygons of their own."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise AnnotationError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    bx, by, bw, bh = check_box(box, "mask_to_polygons")
    height, width = mask.shape
    sx, sy = bw / width, bh / height
    padded = np.pad(mask, 1).astype(np.float32)
    rings_rc = [approximate_polygon(c, tolerance=0) for c in find_contours(padded, 0.5)]
    rings_rc = [r for r in rings_rc if len(r) >= 4]
    # (row, col) in padded pixel-centre units -> level-0 (x, y)
    rings = [np.column_stack([bx + (r[:, 1] - 0.5) * sx, by + (r[:, 0] - 0.5) * sy]) for r in rings_rc]
    rings = [close_ring(r) for r in rings]
    n = len(rings)
    contains = np.zeros((n, n), dtype=bool)  # contains[a, b]: ring a inside ring b
    for a in range(n):
        for b in range(n):
            if a != b:
                contains[a, b] = bool(points_in_poly(rings[a][:1], rings[b])[0])
    depth = contains.sum(axis=1)
    polygons: dict[int, Polygon] = {}
    for a in range(n):
        if depth[a] % 2 == 0:
            polygons[a] = (_oriented(rings[a], ccw=True), [])
    for a in range(n):
        if depth[a] % 2 == 1:
            parents = [b for b in range(n) if contains[a, b] and depth[b] == depth[a] - 1]
            if parents:
                polygons[parents[0]][1].append(_oriented(rings[a], ccw=False))
    return [polygons[a] for a in sorted(polygons)]


def polygons_to_mask(polygons: Sequence[Polygon], box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask of the patch `box`: pixels whose centre is inside an exterior and outside
    that polygon's holes. Parts outside the patch are clipped."""
    bx, by, bw, bh = check_box(box, "polygons_to_mask")
    height, width = int(shape[0]), int(shape[1])
    sx, sy = bw / width, bh / height
    out = np.zeros((height, width), dtype=bool)

    def fill(ring: np.ndarray) -> np.ndarray:
        part = np.zeros((height, width), dtype=bool)
        cols = (ring[:, 0] - bx) / sx - 0.5
        rows = (ring[:, 1] - by) / sy - 0.5
        rr, cc = draw_polygon(rows, cols, shape=(height, width))
        part[rr, cc] = True
        return part

    for exterior, holes in polygons:
        part = fill(exterior)
        for hole in holes:
            part &= ~fill(hole)
        out |= part
    return out


# ---------------------------------------------------------------------- fitting polygons to patches

def vertex_overshoot(polygon: Polygon, box: Box) -> float:
    """How far (level-0 pixels) the polygon's farthest vertex lies outside `box`; 0 when inside."""
    x, y, w, h = box
    pts = np.vstack([polygon[0]] + list(polygon[1]))
    dx = np.maximum(x - pts[:, 0], pts[:, 0] - (x + w))
    dy = np.maximum(y - pts[:, 1], pts[:, 1] - (y + h))
    return float(max(dx.max(), dy.max(), 0.0))


def fits_box(polygon: Polygon, box: Box, tolerance: float) -> bool:
    """Whether every vertex lies inside `box` or at most `tolerance` level-0 pixels outside it."""
    return vertex_overshoot(polygon, box) <= tolerance


def patch_pixel_tolerance(box: Box, shape: tuple[int, int] | None) -> float:
    """One patch pixel in level-0 pixels (the larger axis), or 1 level-0 pixel when the shape is unknown."""
    if shape is None:
        return 1.0
    return max(box[2] / shape[1], box[3] / shape[0])


def overlaps_box(polygon: Polygon, box: Box) -> bool:
    """Whether the polygon's bounding box and `box` share some area (level-0 pixels)."""
    x0, y0, x1, y1 = ring_bounds(polygon[0])
    x, y, w, h = box
    return min(x1, x + w) > max(x0, x) and min(y1, y + h) > max(y0, y)


def assign_to_items(polygons: list[tuple[str, Polygon, int | None]], boxes: dict[int, Box],
                    shapes: dict[int, tuple[int, int]] | None, source: str,
                    warnings: list[str] | None = None) -> dict[int, list[Polygon]]:
    """Group (label, polygon, named item or None) triples by item.

    A polygon naming an item goes to that item; an unnamed one goes to every item whose box it
    fits (overlapping patches share it), or, when it fits none, to every item whose box it crosses.
    "Fits" allows one patch pixel of overshoot (one level-0 pixel when the patch shape is unknown).
    A polygon reaching past its patch is clipped to it when rasterised, and a line saying so is
    appended to `warnings`; one that does not touch its patch (or any patch) is refused."""
    shapes = shapes or {}
    out: dict[int, list[Polygon]] = {}

    def clipped(label: str, polygon: Polygon, item_id: int) -> None:
        box = boxes[item_id]
        if not fits_box(polygon, box, patch_pixel_tolerance(box, shapes.get(item_id))) and warnings is not None:
            warnings.append(f"{source}: {label} reaches {vertex_overshoot(polygon, box):.1f} level-0 px past item "
                            f"{item_id}'s patch ({describe_box(box)}); clipped to the patch")

    for label, polygon, item_id in polygons:
        if item_id is not None:
            if item_id not in boxes:
                raise AnnotationError(f"{source}: {label} belongs to ugafl item {item_id}, but no box is known for "
                                      f"that item (the file has no region for it and none was given)")
            box = boxes[item_id]
            if not overlaps_box(polygon, box):
                raise AnnotationError(f"{source}: {label} lies outside item {item_id}'s patch ({describe_box(box)}): "
                                      f"a vertex is {vertex_overshoot(polygon, box):.1f} level-0 px outside; "
                                      f"redraw it inside the patch")
            clipped(label, polygon, item_id)
            out.setdefault(item_id, []).append(polygon)
            continue
        hits = [i for i, box in boxes.items() if fits_box(polygon, box, patch_pixel_tolerance(box, shapes.get(i)))]
        if not hits:
            hits = [i for i, box in boxes.items() if overlaps_box(polygon, box)]
        if not hits:
            x0, y0, x1, y1 = ring_bounds(polygon[0])
            known = "; ".join(f"item {i}: {describe_box(b)}" for i, b in list(boxes.items())[:5])
            more = f" and {len(boxes) - 5} more" if len(boxes) > 5 else ""
            raise AnnotationError(f"{source}: {label} (x {x0:g}-{x1:g}, y {y0:g}-{y1:g}) lies outside every item's "
                                  f"patch ({known or 'no items known'}{more}); a correction must fit its patch")
        for i in hits:
            clipped(label, polygon, i)
            out.setdefault(i, []).append(polygon)
    return out


def assign_parsed(parsed: ParsedFile, boxes: dict[int, Box] | None, shapes: dict[int, tuple[int, int]] | None,
                  source: str, warnings: list[str] | None = None) -> dict[int, list[Polygon]]:
    """Tumour polygons per corrected item id: boxes from `boxes` and from the file's region
    rectangles (the given ones win). An item is in the result when tumour was drawn in it, or with
    an empty list when its region is marked Negative; a region with neither was not reviewed and
    is left out (a line in `warnings` says so)."""
    known = {int(i): check_box(b, f"item {i}") for i, b in (boxes or {}).items()}
    for item_id, box in parsed.regions.items():
        known.setdefault(item_id, box)
    out: dict[int, list[Polygon]] = {i: [] for i in sorted(parsed.negatives)}
    for item_id, polys in assign_to_items(parsed.tumour, known, shapes, source, warnings).items():
        if item_id in parsed.negatives:
            raise AnnotationError(f"{source}: item {item_id}'s region is marked {NEGATIVE_CLASS} but tumour is drawn in it; "
                                  f"remove one of the two")
        out.setdefault(item_id, []).extend(polys)
    for item_id in sorted(set(parsed.regions) - set(out)):
        if warnings is not None:
            warnings.append(f"{source}: item {item_id}: nothing drawn as tumour and its region not marked "
                            f"{NEGATIVE_CLASS}; left as it is")
    return out


# ---------------------------------------------------------------------- files

def import_png_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask from a PNG holding only {0, 1} or {0, 255} (grey, or RGB with equal channels).
    `shape` is the patch's (H, W); any other size is refused."""
    return decode_png_mask(Path(path), shape, str(path))


def decode_png_mask(source: Path | BinaryIO, shape: tuple[int, int], name: str) -> np.ndarray:
    """`import_png_mask` for a file or an open binary stream; `name` opens every error message."""
    path = name
    want_h, want_w = int(shape[0]), int(shape[1])
    try:
        with Image.open(source) as im:  # reads the header only: the size is checked before decoding
            if im.size != (want_w, want_h):
                raise AnnotationError(f"{path}: mask is {im.size[0]}x{im.size[1]} (width x height), "
                                      f"the patch is {want_w}x{want_h}")
            im.load()
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise AnnotationError(f"{path}: cannot read as an image ({exc})") from None
    if array.ndim == 3:
        channels = array[..., :3]
        if not (channels == channels[..., :1]).all():
            raise AnnotationError(f"{path}: a mask must be greyscale, got a colour image ({array.shape[2]} channels)")
        array = channels[..., 0]
    if array.ndim != 2:
        raise AnnotationError(f"{path}: expected a 2-D mask, got shape {array.shape}")
    if array.shape != (want_h, want_w):
        raise AnnotationError(f"{path}: mask is {array.shape[1]}x{array.shape[0]} (width x height), "
                              f"the patch is {want_w}x{want_h}")
    if array.dtype == np.bool_:
        return array.copy()
    values = set(np.unique(array).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        bad = sorted(values - {0, 1, 255}) or sorted(values)
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise AnnotationError(f"{path}: mask has values {shown}; expected only 0/1 or 0/255")
    return array > 0
