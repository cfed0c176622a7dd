"""`ugafl queue export` / `import`: queued patches go out to QuPath or ASAP and corrections come
back, through the console script; a bad file leaves the queue unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue

UGAFL = Path(sys.executable).with_name("ugafl")
SIZE = 64


def ugafl(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), *map(str, args)], capture_output=True, text=True, timeout=120)


def donut() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    d = np.hypot(yy - 30, xx - 34)
    return (d < 20) & (d >= 8)


def blob() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.hypot(yy - 20, xx - 20) < 12


@pytest.fixture()
def workspace(tmp_path):
    """Two pending items on one slide, 256x256 level-0 px patches at 4x (64 px images)."""
    ws = tmp_path / "ws"
    rng = np.random.default_rng(0)
    with CorrectionQueue(ws) as q:
        for k, mask in enumerate((donut(), blob())):
            pixels = PatchPixels(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), mask,
                                 rng.random((SIZE, SIZE)).astype(np.float32))
            q.add(NewItem(PatchOrigin("s1", (1000 + 512 * k, 2000, 256, 256), 2.0),
                          PatchReason(0.5 - 0.1 * k, "uga", "top-k", "v1", 0), pixels))
    return ws


def accept_suggestions(path: Path) -> Path:
    """What a pathologist does to accept the model's outlines as they are: set their class (QuPath)
    or move them to the Tumor and Exclusion groups (ASAP)."""
    text = path.read_text()
    if path.suffix == ".geojson":
        text = text.replace('"name": "ugafl model"', '"name": "Tumor"')
    else:
        text = text.replace('PartOfGroup="ugafl model hole"', 'PartOfGroup="Exclusion"').replace(
            'PartOfGroup="ugafl model"', 'PartOfGroup="Tumor"')
    path.write_text(text)
    return path


def snapshot(ws: Path) -> tuple:
    with CorrectionQueue(ws) as q:
        return tuple((i.id, i.state, i.correction_path) for i in q.list()), sorted(p.name for p in ws.rglob("*") if p.is_file() and "wal" not in p.name and "shm" not in p.name)


@pytest.mark.parametrize("fmt, suffix", [("geojson", ".geojson"), ("asap", ".xml")])
def test_export_then_import_corrects_every_item_with_the_drawn_mask(workspace, tmp_path, fmt, suffix):
    exported = ugafl("queue", "export", "--workspace", workspace, "--format", fmt, "--out", tmp_path / "out")
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 item(s) in state pending of 1 slide(s)" in exported.stdout
    out = tmp_path / "out" / f"s1{suffix}"  # one file per slide, named for it
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [out.name]
    if fmt == "geojson":
        features = json.loads(out.read_text())["features"]
        tumour = {f["properties"]["metadata"]["ugafl_item"]: f for f in features
                  if f["properties"]["classification"]["name"] == "ugafl model"}
        assert sorted(tumour) == ["1", "2"]
        # Level-0 coordinates: each outline spans its mask's pixel edges, 4 level-0 px per patch
        # pixel, from the patch's origin (1000 + 512 k, 2000).
        for k, mask in enumerate((donut(), blob())):
            rows, cols = np.nonzero(mask)
            points = np.array([p for ring in tumour[str(k + 1)]["geometry"]["coordinates"] for p in ring])
            x0, y0 = 1000 + 512 * k, 2000
            assert (*points.min(axis=0), *points.max(axis=0)) == (
                x0 + 4 * cols.min(), y0 + 4 * rows.min(), x0 + 4 * (cols.max() + 1), y0 + 4 * (rows.max() + 1))
    # Imported untouched, the file corrects nothing: nobody has looked at these patches yet.
    untouched = ugafl("queue", "import", "--workspace", workspace, out, "--format", fmt, "--who", "dr-a")
    assert untouched.returncode == 2 and "nothing in it is a correction for slide s1" in untouched.stderr
    # The pathologist accepts the model's contours as they are: the import reproduces them exactly.
    imported = ugafl("queue", "import", "--workspace", workspace, accept_suggestions(out), "--format", fmt, "--who", "dr-a")
    assert imported.returncode == 0, imported.stderr
    with CorrectionQueue(workspace) as q:
        items = q.list()
        assert [i.state for i in items] == ["corrected", "corrected"]
        for item, expected in zip(items, (donut(), blob())):
            stored = q.load_correction(item.id)
            np.testing.assert_array_equal(stored, expected)  # pixel for pixel, the hole included
            assert q.history(item.id)[-1].who == "dr-a"


def test_importing_twice_is_refused_and_changes_nothing(workspace, tmp_path):
    out = tmp_path / "s1.geojson"
    assert ugafl("queue", "export", "--workspace", workspace, "--out", tmp_path).returncode == 0
    assert ugafl("queue", "import", "--workspace", workspace, accept_suggestions(out)).returncode == 0
    before = snapshot(workspace)
    again = ugafl("queue", "import", "--workspace", workspace, out)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "item 1 is already corrected; nothing was imported" in again.stderr
    assert snapshot(workspace) == before


def test_a_file_naming_a_finished_item_imports_nothing(workspace, tmp_path):
    out = tmp_path / "s1.geojson"
    assert ugafl("queue", "export", "--workspace", workspace, "--out", tmp_path).returncode == 0
    accept_suggestions(out)
    with CorrectionQueue(workspace) as q:
        q.reject(2, "dr-b", "out of focus")
    before = snapshot(workspace)
    result = ugafl("queue", "import", "--workspace", workspace, out)
    assert result.returncode == 2 and "item 2 is already rejected" in result.stderr
    assert snapshot(workspace) == before  # item 1 was not corrected either: all or nothing


def test_png_import_for_one_item_and_its_refusals(workspace, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray((blob() * 255).astype(np.uint8)).save(good)
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((SIZE, SIZE + 1), np.uint8)).save(wrong)
    before = snapshot(workspace)
    refused = ugafl("queue", "import", "--workspace", workspace, wrong, "--format", "png", "--item", 1)
    assert refused.returncode == 2 and "wrong.png" in refused.stderr and "Traceback" not in refused.stderr
    missing = ugafl("queue", "import", "--workspace", workspace, good, "--format", "png")
    assert missing.returncode == 2 and "--item" in missing.stderr
    unknown = ugafl("queue", "import", "--workspace", workspace, good, "--format", "png", "--item", 9)
    assert unknown.returncode == 2 and "item 9" in unknown.stderr
    assert snapshot(workspace) == before
    ok = ugafl("queue", "import", "--workspace", workspace, good, "--format", "png", "--item", 1)
    assert ok.returncode == 0, ok.stderr
    with CorrectionQueue(workspace) as q:
        assert np.array_equal(q.load_correction(1), blob())


# ---------------------------------------------------------------------- one file per slide

def two_slides(ws: Path) -> None:
    """Item 1 on RST_001 and item 2 on UMCU_003, at the same level-0 box (1000, 2000, 256, 256)."""
    rng = np.random.default_rng(1)
    with CorrectionQueue(ws) as q:
        for slide in ("RST_001", "UMCU_003"):
            pixels = PatchPixels(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), blob(),
                                 rng.random((SIZE, SIZE)).astype(np.float32))
            q.add(NewItem(PatchOrigin(slide, (1000, 2000, 256, 256), 2.0), PatchReason(0.5, "uga", "top-k", "v1", 0),
                          pixels))


def square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def drawn(ring: list[list[float]], **props) -> dict:
    """A polygon as a pathologist draws it in QuPath: no metadata, maybe a class."""
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", **props}}


def states(ws: Path) -> dict[int, str]:
    with CorrectionQueue(ws) as q:
        return {i.id: i.state for i in q.list()}


def test_two_slides_with_overlapping_boxes_import_only_into_the_slide_drawn_on(tmp_path):
    ws = tmp_path / "ws"
    two_slides(ws)
    out = tmp_path / "out"
    exported = ugafl("queue", "export", "--workspace", ws, "--out", out)
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.iterdir()) == ["RST_001.geojson", "UMCU_003.geojson"]
    for slide, item in (("RST_001", "1"), ("UMCU_003", "2")):
        features = json.loads((out / f"{slide}.geojson").read_text())["features"]
        assert {f["properties"]["metadata"]["ugafl_slide"] for f in features} == {slide}  # named inside
        assert {f["properties"]["metadata"]["ugafl_item"] for f in features} == {item}
    # The pathologist opens RST_001's file, deletes the model's outline and draws a square, no metadata.
    rst = out / "RST_001.geojson"
    features = json.loads(rst.read_text())["features"]
    region = [f for f in features if f["properties"]["metadata"].get("ugafl_role") == "region"]
    rst.write_text(json.dumps({"type": "FeatureCollection", "features": region + [drawn(square(1040, 2040, 64))]}))
    # The same square in a file that names no slide is refused, and changes nothing.
    loose = tmp_path / "drawn.geojson"
    loose.write_text(json.dumps({"type": "FeatureCollection", "features": [drawn(square(1040, 2040, 64))]}))
    refused = ugafl("queue", "import", "--workspace", ws, loose)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{loose}: does not say which slide it is for; name it with --slide" in refused.stderr
    assert "RST_001, UMCU_003" in refused.stderr
    # RST_001's file given as UMCU_003's is refused too.
    wrong = ugafl("queue", "import", "--workspace", ws, rst, "--slide", "UMCU_003")
    assert wrong.returncode == 2 and "is for slide RST_001, not UMCU_003 (--slide)" in wrong.stderr
    assert states(ws) == {1: "pending", 2: "pending"}

    done = ugafl("queue", "import", "--workspace", ws, rst, "--who", "dr-a")
    assert done.returncode == 0, done.stderr
    assert "imported corrections for 1 item(s) of slide RST_001: 1" in done.stdout
    assert states(ws) == {1: "corrected", 2: "pending"}  # UMCU_003's patch at the same place is untouched
    with CorrectionQueue(ws) as q:
        mask = q.load_correction(1)
    assert mask.sum() == 16 * 16 and mask[10:26, 10:26].all()  # 64 level-0 px at 4 per patch pixel, from (40, 40)


def test_a_file_naming_another_slides_item_is_refused(tmp_path):
    ws = tmp_path / "ws"
    two_slides(ws)
    assert ugafl("queue", "export", "--workspace", ws, "--out", tmp_path / "out", "--format", "asap").returncode == 0
    # ASAP drops ugafl's attribute when it saves a file again: the file's name says the slide.
    xml = (tmp_path / "out" / "RST_001.xml").read_text()
    assert 'ugafl_slide="RST_001"' in xml
    saved = tmp_path / "RST_001.xml"
    saved.write_text(xml.replace(' ugafl_slide="RST_001"', ""))
    accept_suggestions(saved)
    mixed = tmp_path / "UMCU_003.xml"  # UMCU_003's name, RST_001's item 1 inside
    mixed.write_text(saved.read_text())
    refused = ugafl("queue", "import", "--workspace", ws, mixed, "--format", "asap")
    assert refused.returncode == 2
    assert "names item 1, which is on slide RST_001; this file is for slide UMCU_003" in refused.stderr
    assert states(ws) == {1: "pending", 2: "pending"}
    done = ugafl("queue", "import", "--workspace", ws, saved, "--format", "asap")
    assert done.returncode == 0 and "of slide RST_001: 1" in done.stdout, done.stderr
    assert states(ws) == {1: "corrected", 2: "pending"}


def asap_file(path: Path, annotations: list[tuple[str, list[list[float]]]], slide: str, bom: bool = False) -> Path:
    parts = []
    for k, (group, ring) in enumerate(annotations):
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(ring[:-1]))
        parts.append(f'<Annotation Name="Annotation {k}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
                     f'<Coordinates>{coords}</Coordinates></Annotation>')
    text = (f'<?xml version="1.0"?><ASAP_Annotations ugafl_slide="{slide}"><Annotations>{"".join(parts)}'
            f'</Annotations><AnnotationGroups/></ASAP_Annotations>')
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    return path


def test_geojson_and_asap_import_only_tumour_and_agree_pixel_for_pixel(workspace, tmp_path):
    """The same drawing in both formats: a tumour polygon with a hole, an unclassified polygon, and
    a Stroma polygon over both (skipped); both files with a byte-order mark."""
    tumour, hole, loose, stroma = (square(1020, 2020, 120), square(1060, 2060, 40), square(1160, 2160, 60),
                                   square(1000, 2000, 256))
    geojson = tmp_path / "s1.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [tumour, hole[::-1]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        drawn(loose), drawn(stroma, classification={"name": "Stroma"})]}), encoding="utf-8-sig")
    xml = asap_file(tmp_path / "s1.xml", [("Tumor", tumour), ("Exclusion", hole), ("None", loose), ("Stroma", stroma)],
                    "s1", bom=True)
    masks = {}
    for fmt, path in (("geojson", geojson), ("asap", xml)):
        ws = tmp_path / f"ws-{fmt}"
        shutil.copytree(workspace, ws)
        done = ugafl("queue", "import", "--workspace", ws, path, "--format", fmt)
        assert done.returncode == 0, done.stderr
        assert "of slide s1: 1" in done.stdout and "warning" not in done.stderr  # nothing clipped, item 2 untouched
        with CorrectionQueue(ws) as q:
            masks[fmt] = q.load_correction(1)
    np.testing.assert_array_equal(masks["geojson"], masks["asap"])
    expected = np.zeros((SIZE, SIZE), bool)
    expected[5:35, 5:35] = True  # the tumour, 120 level-0 px from (20, 20) at 4 per pixel
    expected[15:25, 15:25] = False  # its hole
    expected[40:55, 40:55] = True  # the unclassified square
    np.testing.assert_array_equal(masks["geojson"], expected)  # and not the Stroma square over the whole patch


def test_a_polygon_past_its_patch_is_clipped_with_a_warning(workspace, tmp_path):
    path = tmp_path / "s1.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [drawn(square(1200, 1900, 200))]}))
    done = ugafl("queue", "import", "--workspace", workspace, path)
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "past item 1's patch (x 1000-1256, y 2000-2256); clipped to the patch" in done.stderr
    with CorrectionQueue(workspace) as q:
        mask = q.load_correction(1)
        assert q.get(2).state == "pending"
    assert mask.sum() == 14 * 25 and mask[:25, 50:].all()  # x 1200-1256, y 2000-2100 of the patch


def test_export_refuses_a_file_as_its_folder_and_an_unknown_slide(workspace, tmp_path):
    a_file = tmp_path / "q.geojson"
    a_file.write_text("{}")
    refused = ugafl("queue", "export", "--workspace", workspace, "--out", a_file)
    assert refused.returncode == 2 and f"--out {a_file}: is a file" in refused.stderr and a_file.read_text() == "{}"
    unknown = ugafl("queue", "export", "--workspace", workspace, "--out", tmp_path / "o", "--slide", "nope")
    assert unknown.returncode == 2 and "--slide nope: no item in state pending is on it (slides with such items: s1)" in unknown.stderr
    assert not (tmp_path / "o").exists()
    one = ugafl("queue", "export", "--workspace", workspace, "--out", tmp_path / "o", "--slide", "s1", "--format", "asap")
    assert one.returncode == 0 and [p.name for p in (tmp_path / "o").iterdir()] == ["s1.xml"]


def test_untouched_patches_stay_open_and_a_negative_region_says_no_tumour(workspace, tmp_path):
    """A file the pathologist worked through in part: item 1's region marked Negative (no tumour
    there), item 2 not looked at. Item 1 is corrected (empty), item 2 stays pending, and the import
    says so; a corrected item exports its correction."""
    assert ugafl("queue", "export", "--workspace", workspace, "--out", tmp_path).returncode == 0
    path = tmp_path / "s1.geojson"
    data = json.loads(path.read_text())
    for feature in data["features"]:
        props = feature["properties"]
        if props["name"] == "ugafl item 1":
            props["classification"] = {"name": "Negative"}
    path.write_text(json.dumps(data))
    done = ugafl("queue", "import", "--workspace", workspace, path)
    assert done.returncode == 0 and "of slide s1: 1" in done.stdout, done.stderr
    assert "item 2: nothing drawn as tumour and its region not marked Negative; left as it is" in done.stderr
    with CorrectionQueue(workspace) as q:
        assert q.get(1).state == "corrected" and not q.load_correction(1).any()
        assert q.get(2).state == "pending"
        q.submit_correction(2, blob(), "dr-b")
    exported = ugafl("queue", "export", "--workspace", workspace, "--out", tmp_path / "done", "--state", "corrected")
    assert exported.returncode == 0, exported.stderr
    features = json.loads((tmp_path / "done" / "s1.geojson").read_text())["features"]
    outline = [f for f in features if f["properties"]["metadata"].get("ugafl_item") == "2"
               and f["properties"]["classification"]["name"] == "Tumor"]
    rows, cols = np.nonzero(blob())
    points = np.array([p for ring in outline[0]["geometry"]["coordinates"] for p in ring])
    assert (*points.min(axis=0), *points.max(axis=0)) == (1512 + 4 * cols.min(), 2000 + 4 * rows.min(),
                                                         1512 + 4 * (cols.max() + 1), 2000 + 4 * (rows.max() + 1))
