"""Annotation exchange: mask <-> polygons, QuPath GeoJSON, ASAP XML, PNG masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.draw import disk

from ugafl.client.annotations import asap_xml, qupath_geojson
from ugafl.client.annotations.geometry import (AnnotationError, ExportPatch, import_png_mask, mask_to_polygons,
                                      polygon_area, polygons_to_mask)

QUPATH_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "qupath"
BOX = (4096, 2048, 1024, 768)  # level-0; patch 256 x 192 pixels -> 4 level-0 px per patch pixel
SHAPE = (192, 256)


def _disk(mask: np.ndarray, centre: tuple[int, int], radius: float, value: bool) -> None:
    rr, cc = disk(centre, radius, shape=mask.shape)
    mask[rr, cc] = value


def _masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (mask, hole pixels that must stay background)."""
    out = {}
    donut = np.zeros(SHAPE, bool)
    _disk(donut, (96, 128), 80, True)
    _disk(donut, (96, 128), 30, False)
    hole = np.zeros(SHAPE, bool)
    _disk(hole, (96, 128), 28, True)
    out["donut"] = (donut, hole)
    two = np.zeros(SHAPE, bool)
    _disk(two, (60, 60), 40, True)
    _disk(two, (130, 190), 50, True)
    out["two blobs"] = (two, np.zeros(SHAPE, bool))
    holes2 = np.zeros(SHAPE, bool)
    holes2[20:170, 20:240] = True
    holes2[50:100, 50:100] = False
    holes2[90:150, 150:220] = False
    holes2[110:130, 170:200] = True  # an island inside the second hole
    hole = np.zeros(SHAPE, bool)
    hole[52:98, 52:98] = True
    hole[92:108, 152:218] = True
    out["blob with two holes and an island"] = (holes2, hole)
    rng = np.random.default_rng(7)
    for seed in range(4):
        blobby = gaussian_filter(rng.random(SHAPE), 5) > 0.5
        out[f"random blobby {seed}"] = (blobby, np.zeros(SHAPE, bool))
    edge = np.zeros(SHAPE, bool)
    edge[:60, :] = True  # touches three patch edges
    out["touching the edges"] = (edge, np.zeros(SHAPE, bool))
    return out


MASKS = _masks()


# ---------------------------------------------------------------------- geometry

@pytest.mark.parametrize("name", list(MASKS))
def test_mask_polygons_round_trip_is_exact(name):
    mask, _ = MASKS[name]
    polygons = mask_to_polygons(mask, BOX)
    for exterior, holes in polygons:
        assert np.array_equal(exterior[0], exterior[-1])
        assert exterior[:, 0].min() >= BOX[0] and exterior[:, 0].max() <= BOX[0] + BOX[2]
    back = polygons_to_mask(polygons, BOX, SHAPE)
    assert np.array_equal(back, mask)


def test_holes_are_classified_by_nesting():
    polygons = mask_to_polygons(MASKS["donut"][0], BOX)
    assert len(polygons) == 1 and len(polygons[0][1]) == 1
    polygons = mask_to_polygons(MASKS["blob with two holes and an island"][0], BOX)
    assert sorted(len(h) for _, h in polygons) == [0, 2]  # the island is a polygon of its own


# ---------------------------------------------------------------------- round trips through files

def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.mark.parametrize("fmt", ["geojson", "asap"])
@pytest.mark.parametrize("name", list(MASKS))
def test_file_round_trip(tmp_path, fmt, name):
    mask, hole = MASKS[name]
    other = np.zeros(SHAPE, bool)
    _disk(other, (50, 50), 20, True)
    other_box = (BOX[0] + 2048, BOX[1], BOX[2], BOX[3])  # a second item elsewhere on the slide
    items = [ExportPatch(12, BOX, mask), (13, other_box, other, "ignored extra")]
    module = qupath_geojson if fmt == "geojson" else asap_xml
    path = tmp_path / ("items.geojson" if fmt == "geojson" else "items.xml")
    module.export_items(items, path, contour_class="Tumor")  # as a corrected item's outline goes out
    # from the file's own region rectangles, and again from given boxes
    for boxes in (None, {12: BOX, 13: other_box}):
        got = module.import_corrections(path, boxes)
        assert set(got) == {12, 13}
        back = polygons_to_mask(got[12], BOX, SHAPE)
        agreement = _agreement(back, mask)
        print(f"{fmt} {name}: pixel agreement {agreement:.6f}")
        assert agreement >= 0.99
        assert not back[hole].any(), "holes must survive the round trip"
        assert _agreement(polygons_to_mask(got[13], other_box, SHAPE), other) >= 0.99


def test_geojson_export_shape(tmp_path):
    path = qupath_geojson.export_items([(5, BOX, MASKS["donut"][0])], tmp_path / "a.geojson")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    region, tumour = data["features"]
    assert region["properties"]["classification"]["name"] == "Region*"
    assert region["properties"]["name"] == "ugafl item 5"
    assert tumour["properties"]["objectType"] == "annotation"
    assert tumour["properties"]["classification"]["name"] == "ugafl model"  # a suggestion, not a correction
    assert tumour["properties"]["metadata"]["ugafl_item"] == "5"
    assert len(tumour["geometry"]["coordinates"]) == 2  # exterior + hole
    assert not list(tmp_path.glob("*.part"))


def test_empty_mask_exports_only_the_region(tmp_path):
    path = qupath_geojson.export_items([(1, BOX, np.zeros(SHAPE, bool))], tmp_path / "e.geojson")
    warnings: list[str] = []
    assert qupath_geojson.import_corrections(path, warnings=warnings) == {}  # nobody said anything about it
    assert warnings == [f"{path}: item 1: nothing drawn as tumour and its region not marked Negative; left as it is"]
    negative = path.read_text().replace('"name": "Region*"', '"name": "Negative"')  # the pathologist: no tumour here
    path.write_text(negative)
    assert qupath_geojson.import_corrections(path) == {1: []}


@pytest.mark.parametrize("fmt", ["geojson", "asap"])
def test_the_model_suggestion_is_never_imported(tmp_path, fmt):
    """Exported as it is, a file corrects nothing: the model's outline is a suggestion of its own
    class; only when the pathologist makes it Tumor does it count."""
    module = qupath_geojson if fmt == "geojson" else asap_xml
    path = module.export_items([(12, BOX, MASKS["donut"][0])], tmp_path / f"m.{fmt}")
    assert module.import_corrections(path) == {}
    text = path.read_text()
    if fmt == "geojson":
        text = text.replace('"name": "ugafl model"', '"name": "Tumor"')
    else:
        text = text.replace('PartOfGroup="ugafl model hole"', 'PartOfGroup="Exclusion"').replace(
            'PartOfGroup="ugafl model"', 'PartOfGroup="Tumor"')
    path.write_text(text)
    got = module.import_corrections(path)
    assert np.array_equal(polygons_to_mask(got[12], BOX, SHAPE), MASKS["donut"][0])
    # A region marked Negative with tumour drawn in it contradicts itself: refused.
    if fmt == "geojson":
        path.write_text(text.replace('"name": "Region*"', '"name": "Negative"'))
        with pytest.raises(AnnotationError, match="marked Negative but tumour is drawn in it"):
            module.import_corrections(path)


# ---------------------------------------------------------------------- the real QuPath export

def test_real_qupath05_export_imports():
    box = (8000, 5300, 2048, 1536)
    got = qupath_geojson.import_corrections(QUPATH_DIR / "qupath05.geojson", {7: box})
    assert list(got) == [7] and len(got[7]) == 3
    shape = (1536, 2048)  # 1 level-0 pixel per patch pixel
    mask = polygons_to_mask(got[7], box, shape)
    area = sum(polygon_area(p) for p in got[7])
    print(f"qupath05: shoelace area {area:.0f}, rasterised {mask.sum()} ({mask.sum() / area:.4f})")
    assert abs(mask.sum() - area) / area < 0.01


def test_real_qupath05_outside_the_box_is_refused():
    with pytest.raises(AnnotationError, match=r"feature 0 \(UT\).*outside every item's patch"):
        qupath_geojson.import_corrections(QUPATH_DIR / "qupath05.geojson", {7: (0, 0, 1024, 1024)})


# ---------------------------------------------------------------------- refusals

def _feature(geometry, **props):
    return {"type": "Feature", "geometry": geometry, "properties": {"objectType": "annotation", **props}}


def _square(x, y, s):
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


def _write(tmp_path, features, name="c.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


BOXES = {12: BOX}


def test_plain_export_with_classes_and_multipolygon(tmp_path):
    path = _write(tmp_path, [
        _feature({"type": "Polygon", "coordinates": [_square(4200, 2100, 100)]}),
        _feature({"type": "MultiPolygon", "coordinates": [[_square(4400, 2100, 50)], [_square(4600, 2100, 50)]]},
                 classification={"name": "Tumour", "color": [1, 2, 3]}, isLocked=False, measurements={}),
        _feature({"type": "Polygon", "coordinates": [_square(4200, 2300, 100)]}, classification={"name": "Stroma"}),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"objectType": "detection"}},
    ])
    got = qupath_geojson.import_corrections(path, BOXES)
    # the unclassified square and both Tumour squares, as drawn; not the Stroma one, not the detection
    outlines = sorted((*e.min(axis=0), *e.max(axis=0), len(holes)) for e, holes in got[12])
    assert outlines == [(4200, 2100, 4300, 2200, 0), (4400, 2100, 4450, 2150, 0), (4600, 2100, 4650, 2150, 0)]


@pytest.mark.parametrize("geometry, message", [
    ({"type": "Point", "coordinates": [4200, 2100]}, "geometry is Point"),
    ({"type": "LineString", "coordinates": [[4200, 2100], [4300, 2200]]}, "geometry is LineString"),
    ({"type": "Polygon", "coordinates": [[[4200, 2100], [4300, 2100], [4300, 2200], [4200, 2200]]]}, "not closed"),
    ({"type": "Polygon", "coordinates": [[[4200, 2100], [4300, 2100], [4200, 2100]]]}, "at least 4 positions"),
    ({"type": "Polygon", "coordinates": [[[4200, "x"], [4300, 2100], [4300, 2200], [4200, "x"]]]}, "non-numeric"),
    ({"type": "Polygon", "coordinates": [[[4200, True], [4300, 2100], [4300, 2200], [4200, True]]]}, "non-numeric"),
    ({"type": "Polygon", "coordinates": [_square(100, 100, 50)]}, "outside every item's patch"),
])
def test_geojson_refusals(tmp_path, geometry, message):
    path = _write(tmp_path, [_feature({"type": "Polygon", "coordinates": [_square(4200, 2100, 10)]}),
                             _feature(geometry)])
    with pytest.raises(AnnotationError, match=message) as info:
        qupath_geojson.import_corrections(path, BOXES)
    assert str(path) in str(info.value) and "feature 1" in str(info.value)


def test_geojson_outside_its_named_item(tmp_path):
    path = _write(tmp_path, [_feature({"type": "Polygon", "coordinates": [_square(3900, 2100, 100)]},
                                      metadata={"ugafl_item": "12"})])
    with pytest.raises(AnnotationError, match=r"feature 0 lies outside item 12's patch \(x 4096-5120, y 2048-2816\)"):
        qupath_geojson.import_corrections(path, BOXES)
    # partly outside: clipped to the patch, and said so
    path = _write(tmp_path, [_feature({"type": "Polygon", "coordinates": [_square(4000, 2100, 200)]},
                                      metadata={"ugafl_item": "12"})])
    warnings: list[str] = []
    got = qupath_geojson.import_corrections(path, BOXES, {12: SHAPE}, warnings=warnings)
    mask = polygons_to_mask(got[12], BOX, SHAPE)
    assert mask.sum() == 26 * 50  # the patch pixels whose centre is inside: x 4096-4200 (26), y 2100-2300 (50)
    assert warnings == [f"{path}: feature 0 reaches 96.0 level-0 px past item 12's patch (x 4096-5120, y 2048-2816); "
                        f"clipped to the patch"]
    # one patch pixel (4 level-0 px here) of overshoot is tolerated when the patch shape is known
    path = _write(tmp_path, [_feature({"type": "Polygon", "coordinates": [_square(4093, 2100, 100)]},
                                      metadata={"ugafl_item": 12})])
    assert len(qupath_geojson.import_corrections(path, BOXES, {12: SHAPE})[12]) == 1


@pytest.mark.parametrize("text, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a GeoJSON FeatureCollection"),
    ('{"type": "Feature"}', "expected a GeoJSON FeatureCollection"),
    ('{"type": "FeatureCollection"}', "no features list"),
    ('{"type": "FeatureCollection", "features": [3]}', "feature 0: not a GeoJSON Feature"),
])
def test_geojson_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        qupath_geojson.import_corrections(path, BOXES)


@pytest.mark.parametrize("text, message", [
    ("<ASAP_Annotations><Annotations>", "malformed XML"),
    ("<Other/>", "expected <ASAP_Annotations>"),
    ('<ASAP_Annotations><Annotations><Annotation Name="t1" Type="Polygon" PartOfGroup="Tumor"/>'
     '</Annotations></ASAP_Annotations>', r"annotation 0 \(t1\): has no Coordinates"),
    ('<ASAP_Annotations><Annotations><Annotation Name="t1" Type="Polygon" PartOfGroup="Tumor"><Coordinates>'
     '<Coordinate Order="0" X="4200" Y="2100"/><Coordinate Order="1" X="abc" Y="2100"/>'
     '<Coordinate Order="2" X="4300" Y="2200"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     r"\(t1\): coordinate 1 has a non-numeric value"),
    ('<ASAP_Annotations><Annotations><Annotation Name="t1" Type="Polygon" PartOfGroup="Tumor"><Coordinates>'
     '<Coordinate Order="0" X="4200"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     "has no Y attribute"),
    ('<ASAP_Annotations><Annotations><Annotation Name="t1" Type="Polygon" PartOfGroup="Tumor"><Coordinates>'
     '<Coordinate Order="0" X="10" Y="10"/><Coordinate Order="1" X="20" Y="10"/><Coordinate Order="2" X="20" Y="20"/>'
     '</Coordinates></Annotation></Annotations></ASAP_Annotations>', "outside every item's patch"),
])
def test_asap_refusals(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as info:
        asap_xml.import_corrections(path, BOXES)
    assert str(path) in str(info.value)


def test_asap_camelyon16_groups(tmp_path):
    def ann(name, group, pts):
        coords = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>' for k, (x, y) in enumerate(pts))
        return f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58"><Coordinates>{coords}</Coordinates></Annotation>'
    outer = [(4200, 2100), (4600, 2100), (4600, 2500), (4200, 2500)]
    inner = [(4300, 2200), (4400, 2200), (4400, 2300), (4300, 2300)]
    path = tmp_path / "c16.xml"
    path.write_text(f"<ASAP_Annotations><Annotations>{ann('Annotation 0', '_0', outer)}"
                    f"{ann('Annotation 1', '_2', inner)}</Annotations><AnnotationGroups/></ASAP_Annotations>")
    got = asap_xml.import_corrections(path, BOXES)
    assert len(got[12]) == 1 and len(got[12][0][1]) == 1
    mask = polygons_to_mask(got[12], BOX, SHAPE)
    assert mask[(2150 - BOX[1]) // 4, (4250 - BOX[0]) // 4] and not mask[(2250 - BOX[1]) // 4, (4350 - BOX[0]) // 4]


@pytest.mark.parametrize("array, message", [
    (np.zeros((10, 10), np.uint8), "mask is 10x10 .* the patch is 256x192"),
    (np.full(SHAPE, 2, np.uint8), "values 2"),
    (np.where(np.eye(SHAPE[0], SHAPE[1], dtype=bool), 128, 0).astype(np.uint8), "values 128"),
    (np.dstack([np.zeros(SHAPE, np.uint8), np.full(SHAPE, 255, np.uint8), np.zeros(SHAPE, np.uint8)]), "colour"),
])
def test_png_refusals(tmp_path, array, message):
    path = tmp_path / "m.png"
    Image.fromarray(array).save(path)
    with pytest.raises(AnnotationError, match=message) as info:
        import_png_mask(path, SHAPE)
    assert str(path) in str(info.value)


def test_png_accepts_0_1_and_0_255(tmp_path):
    mask = MASKS["donut"][0]
    for scale in (1, 255):
        Image.fromarray(mask.astype(np.uint8) * scale).save(tmp_path / "m.png")
        assert np.array_equal(import_png_mask(tmp_path / "m.png", SHAPE), mask)
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(AnnotationError, match="cannot read"):
        import_png_mask(tmp_path / "x.png", SHAPE)


# ---------------------------------------------------------------------- fuzzing the GeoJSON importer

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=20)
_coord = st.one_of(st.floats(4000, 5300), st.integers(4000, 5300), _scalars)
_position = st.one_of(st.lists(_coord, min_size=2, max_size=3), _json)
_ring = st.one_of(st.lists(_position, max_size=6), _json,
                  st.lists(st.tuples(st.floats(4100, 5100), st.floats(2050, 2800)), min_size=3, max_size=6)
                  .map(lambda pts: [list(p) for p in pts] + [list(pts[0])]))
_geometry = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", "Bogus"]),
                           "coordinates": st.one_of(st.lists(_ring, max_size=3), st.lists(st.lists(_ring, max_size=2), max_size=2), _json)}),
    _json)
_props = st.one_of(
    st.fixed_dictionaries({}, optional={
        "objectType": st.one_of(st.just("annotation"), _scalars),
        "name": _scalars,
        "classification": st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["Tumor", "Region*", "Other"])}), _json),
        "metadata": st.one_of(st.fixed_dictionaries({"ugafl_item": st.one_of(st.just("12"), st.just(12), _scalars)},
                                                    optional={"ugafl_role": st.just("region")}), _json)}),
    _json)
_feature_st = st.one_of(st.fixed_dictionaries({"type": st.just("Feature"), "geometry": _geometry, "properties": _props}), _json)
_document = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["FeatureCollection", "Feature", 3]),
                           "features": st.one_of(st.lists(_feature_st, max_size=4), _json)}),
    _json)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(document=_document, use_boxes=st.booleans())
def test_geojson_importer_never_leaks_other_exceptions(tmp_path, document, use_boxes):
    path = tmp_path / "fuzz.geojson"
    path.write_text(json.dumps(document))
    try:
        got = qupath_geojson.import_corrections(path, BOXES if use_boxes else None)
    except AnnotationError:
        return
    assert isinstance(got, dict)
    for item_id, polygons in got.items():
        assert isinstance(item_id, int)
        for exterior, holes in polygons:
            assert exterior.ndim == 2 and exterior.shape[1] == 2 and np.isfinite(exterior).all()
            polygons_to_mask([(exterior, holes)], BOX, SHAPE)
