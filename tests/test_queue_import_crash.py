"""SIGKILL in the middle of many imports (QuPath GeoJSON, ASAP XML and PNG files, through
`annotation_io.import_file`, the code behind `ugafl queue import`): afterwards every acknowledged
import is there, whole; every file landed entirely or not at all; nothing is half-written."""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigkill import kill_after_acks
from ugafl.client.annotations import asap_xml, qupath_geojson
from ugafl.client.annotations.geometry import ExportPatch, polygons_to_mask
from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue

SIZE = 32  # patch pixels; boxes are 128 level-0 px at 4x
FORMATS = {"geojson": (qupath_geojson, ".geojson", 2), "asap": (asap_xml, ".xml", 2), "png": (None, ".png", 1)}

CHILD = """
import sys
from pathlib import Path
from ugafl.client.annotations.exchange import import_file
ws, listing = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
for line in listing.read_text().splitlines():
    fmt, path, item = line.split("\\t")
    ids = import_file(ws, path, fmt, "dr-crash", int(item) if item else None).ids
    print(path, *ids, flush=True)
"""


def corrected_mask(item_id: int) -> np.ndarray:
    """A donut (a polygon with a hole) placed by the item id: what the pathologist drew."""
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    d = np.hypot(yy - 10 - item_id % 12, xx - 12 - (item_id * 5) % 9)
    return (d < 9) & (d >= 3)


def build(ws: Path, files_dir: Path, n_items: int) -> tuple[list[tuple[str, Path, list[int]]], dict[int, np.ndarray]]:
    """The queue, the correction files (formats in turn) and the mask each item must end with."""
    rng = np.random.default_rng(0)
    boxes = {}
    with CorrectionQueue(ws) as q:
        for i in range(n_items):
            box = (256 * (i % 20), 256 * (i // 20), 128, 128)
            pixels = PatchPixels(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), rng.random((SIZE, SIZE)) < 0.3,
                                 rng.random((SIZE, SIZE)).astype(np.float32))
            reason = PatchReason(1.0 - i / n_items, "uga", "top-k", "v1", 0)
            item_id = q.add(NewItem(PatchOrigin("s1.tif", box, 2.0), reason, pixels))
            boxes[item_id] = box
    files, expected, ids, k = [], {}, sorted(boxes), 0
    shapes = {i: (SIZE, SIZE) for i in ids}
    while ids:
        fmt = ("geojson", "asap", "png")[k % 3]
        module, suffix, per_file = FORMATS[fmt]
        group, ids = ids[:per_file], ids[per_file:]
        path = files_dir / f"{k:03d}{suffix}"
        if module is None:
            mask = corrected_mask(group[0])
            Image.fromarray(mask.astype(np.uint8) * 255).save(path)
            expected[group[0]] = mask
        else:
            module.export_items([ExportPatch(i, boxes[i], corrected_mask(i)) for i in group], path, slide="s1.tif",
                                contour_class="Tumor")  # what the pathologist drew
            polygons = module.import_corrections(path, {i: boxes[i] for i in group}, shapes)
            assert sorted(polygons) == group
            for i in group:
                expected[i] = polygons_to_mask(polygons[i], boxes[i], (SIZE, SIZE))
                assert np.mean(expected[i] == corrected_mask(i)) > 0.95 and not expected[i][10 + i % 12, 12 + (i * 5) % 9]
        files.append((fmt, path, group))
        k += 1
    return files, expected


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_acknowledged_imports_survive_sigkill(tmp_path: Path, seed: int) -> None:
    ws, files_dir = tmp_path / "ws", tmp_path / "files"
    files_dir.mkdir()
    files, expected = build(ws, files_dir, n_items=100)
    listing = tmp_path / "files.tsv"
    listing.write_text("".join(f"{fmt}\t{path}\t{group[0] if fmt == 'png' else ''}\n" for fmt, path, group in files))

    rng_seed = seed * 104729 + int(time.time())  # another kill point each run (not a timing)...
    print(f"kill-point seed {rng_seed}")  # ...shown on failure, so that run can be replayed
    rng = random.Random(rng_seed)
    kill_after = rng.randint(8, len(files) - 8)
    acked = kill_after_acks([sys.executable, "-c", CHILD, str(ws), str(listing)], kill_after, rng, 0.02)
    acked_ids = {int(x) for line in acked for x in line.split()[1:]}
    assert len(acked) >= kill_after and acked_ids

    with sqlite3.connect(ws / "queue.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with CorrectionQueue(ws) as q:
        states = {i.id: i.state for i in q.list()}
        for item_id in acked_ids:
            assert states[item_id] == "corrected", item_id
        for fmt, path, group in files:  # every file entirely or not at all, acknowledged or not
            landed = [states[i] == "corrected" for i in group]
            assert all(landed) or not any(landed), (path.name, landed)
            for i in group:
                if states[i] == "corrected":
                    assert np.array_equal(q.load_correction(i), expected[i]), (path.name, i)
                    assert q.history(i)[-1].who == "dr-crash"
                else:
                    assert states[i] == "pending" and q.get(i).correction_path is None
        assert sum(s == "corrected" for s in states.values()) < len(states), "the kill came after the last import"
        q.sweep_orphans()  # at most the files of the import the kill interrupted
        referenced = {p for i in q.list() for p in (i.image_path, i.model_mask_path, i.uncertainty_path,
                                                    i.correction_path) if p is not None}
        assert {p for p in (ws.resolve() / "queue").rglob("*") if p.is_file()} == referenced

    # The interrupted imports can simply be run again: each remaining file imports whole.
    for fmt, path, group in files:
        if any(states[i] != "corrected" for i in group):
            from ugafl.client.annotations.exchange import import_file

            assert import_file(ws, path, fmt, "dr-crash", group[0] if fmt == "png" else None).ids == group
    with CorrectionQueue(ws) as q:
        assert q.counts()["corrected"] == len(expected)
