"""`ugafl queue export` / `import`: queued patches go out to QuPath or ASAP and corrections come
back, through the console script; a bad file leaves the queue unchanged."""

from __future__ import annotations

import json
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


def snapshot(ws: Path) -> tuple:
    with CorrectionQueue(ws) as q:
        return tuple((i.id, i.state, i.correction_path) for i in q.list()), sorted(p.name for p in ws.rglob("*") if p.is_file() and "wal" not in p.name and "shm" not in p.name)


@pytest.mark.parametrize("fmt, suffix", [("geojson", ".geojson"), ("asap", ".xml")])
def test_export_then_import_corrects_every_item_with_the_drawn_mask(workspace, tmp_path, fmt, suffix):
    out = tmp_path / f"queue{suffix}"
    exported = ugafl("queue", "export", "--workspace", workspace, "--format", fmt, "--out", out)
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 item(s)" in exported.stdout
    if fmt == "geojson":
        features = json.loads(out.read_text())["features"]
        tumour = {f["properties"]["metadata"]["ugafl_item"]: f for f in features
                  if f["properties"]["classification"]["name"] == "Tumor"}
        assert sorted(tumour) == ["1", "2"]
        # Level-0 coordinates: each outline spans its mask's pixel edges, 4 level-0 px per patch
        # pixel, from the patch's origin (1000 + 512 k, 2000).
        for k, mask in enumerate((donut(), blob())):
            rows, cols = np.nonzero(mask)
            points = np.array([p for ring in tumour[str(k + 1)]["geometry"]["coordinates"] for p in ring])
            x0, y0 = 1000 + 512 * k, 2000
            assert (*points.min(axis=0), *points.max(axis=0)) == (
                x0 + 4 * cols.min(), y0 + 4 * rows.min(), x0 + 4 * (cols.max() + 1), y0 + 4 * (rows.max() + 1))
    # The pathologist accepts the model's contours unchanged: the import reproduces them exactly.
    imported = ugafl("queue", "import", "--workspace", workspace, out, "--format", fmt, "--who", "dr-a")
    assert imported.returncode == 0, imported.stderr
    with CorrectionQueue(workspace) as q:
        items = q.list()
        assert [i.state for i in items] == ["corrected", "corrected"]
        for item, expected in zip(items, (donut(), blob())):
            stored = q.load_correction(item.id)
            np.testing.assert_array_equal(stored, expected)  # pixel for pixel, the hole included
            assert q.history(item.id)[-1].who == "dr-a"


def test_importing_twice_is_refused_and_changes_nothing(workspace, tmp_path):
    out = tmp_path / "q.geojson"
    assert ugafl("queue", "export", "--workspace", workspace, "--out", out).returncode == 0
    assert ugafl("queue", "import", "--workspace", workspace, out).returncode == 0
    before = snapshot(workspace)
    again = ugafl("queue", "import", "--workspace", workspace, out)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "item 1 is already corrected; nothing was imported" in again.stderr
    assert snapshot(workspace) == before


def test_a_file_naming_a_finished_item_imports_nothing(workspace, tmp_path):
    out = tmp_path / "q.geojson"
    assert ugafl("queue", "export", "--workspace", workspace, "--out", out).returncode == 0
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
