"""`ugafl queue ...` end to end, as a user runs it: the console script in a subprocess on a tiny
synthetic dataset scored by `ugafl uncertainty` with a tiny untrained checkpoint."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ugafl.cli.queue_cmd import format_table
from ugafl.client.queue.fill import find_slide
from ugafl.client.queue.store import CorrectionQueue
from ugafl.simulations.annotator import fit_mask, perturb_boundary
from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.manifest import load_manifest
from ugafl.common.masks import load_mask
from ugafl.common.model import ModelConfig, build_model, to_input
from ugafl.common.slide import open_slide
from ugafl.common.uncertainty_measures import compute_measures
from ugafl.common.uncertainty_methods import load_method
from ugafl.simulations.synth import SynthConfig, generate_dataset

UGAFL = Path(sys.executable).with_name("ugafl")
TINY = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0)


def ugafl(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UGAFL), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One centre, 2 slides, a tiny checkpoint, and a workspace holding their tta patch scores."""
    root = tmp_path_factory.mktemp("queue_cli")
    data = root / "data"
    generate_dataset(data, SynthConfig(slides_per_centre=2, seed=11, centres=("UMCU",)), workers=2, progress=False)
    ckpt = root / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, build_model(TINY), TINY)
    slides = data / "slides" / "UMCU"
    ws = root / "ws_scored"
    result = ugafl("uncertainty", slides, "--model", ckpt, "--method", "tta", "--passes", 2, "--out", root / "out",
                   "--workspace", ws, "--device", "cpu", "--patch-um", TINY.patch_size * TINY.mpp)
    assert result.returncode == 0, result.stderr
    tables = sorted((ws / "patch_scores").glob("*.tta.csv"))
    assert len(tables) == 2
    rows = {}
    for table in tables:
        with table.open() as handle:
            rows[table.name[: -len(".tta.csv")]] = list(csv.DictReader(handle))
    return {"root": root, "data": data, "ckpt": ckpt, "slides": slides, "ws": ws, "rows": rows}


def fresh_workspace(scored, name: str) -> Path:
    ws = scored["root"] / name
    shutil.copytree(scored["ws"] / "patch_scores", ws / "patch_scores")
    return ws


def select(scored, ws: Path, *extra) -> subprocess.CompletedProcess[str]:
    return ugafl("queue", "select", "--workspace", ws, "--slides", scored["slides"], "--model", scored["ckpt"],
                 "--method", "tta", "--passes", 2, "--device", "cpu", *extra)


def boxes(items) -> list[tuple]:
    return [(it.slide, it.x, it.y, it.width, it.height) for it in items]


def overlap(a, b) -> bool:
    return a[0] == b[0] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]


def assert_disjoint(box_list) -> None:
    for i, a in enumerate(box_list):
        for b in box_list[i + 1:]:
            assert not overlap(a, b), (a, b)


@pytest.mark.slow
def test_select_list_annotate_show(scored):
    ws = fresh_workspace(scored, "ws_main")
    result = select(scored, ws, "--selection", "stochastic-batch", "--budget", 3, "--seed", 1)
    assert result.returncode == 0, result.stderr
    assert "queued 3 patch(es)" in result.stdout
    version = load_checkpoint(scored["ckpt"]).content_hash[:12]
    method = load_method("tta", [scored["ckpt"]], passes=2)  # as `select` was told
    with CorrectionQueue(ws) as q:
        first = q.list()
        assert len(first) == 3 and all(it.state == "pending" for it in first)
        for it in first:
            assert it.selection == "stochastic-batch" and it.measure == "uga" and it.model_version == version
            assert it.round == 0
            table = {(int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"])): r for r in scored["rows"][it.slide]}
            row = table[it.box]  # the box comes from the slide's patch table
            assert it.score == pytest.approx(float(row["uga"]), abs=1e-9) and it.mpp == float(row["mpp"])
            image = q.load_image(it.id)
            assert image.shape == (TINY.patch_size, TINY.patch_size, 3) and image.dtype == np.uint8
            # the box's pixels, read from the slide at the item's resolution
            with open_slide(find_slide(scored["slides"], it.slide)) as slide:
                np.testing.assert_array_equal(image, slide.read_region((it.x, it.y), (it.width, it.height), it.mpp))
            # the method's own view of them: p̄ >= 0.5 as the model's mask and the UGA map as uncertainty
            out = method(to_input(image[None].copy()))
            prob = out.probs.mean(dim=0)[0, 1].numpy()
            model_mask = q.load_model_mask(it.id)
            assert ((model_mask == (prob >= 0.5)) | (np.abs(prob - 0.5) < 1e-5)).all()  # ties: float noise
            np.testing.assert_allclose(q.load_uncertainty(it.id), compute_measures(out.probs)["uga"][0].numpy(),
                                       rtol=0, atol=1e-5)
        assert_disjoint(boxes(first))

    # A second selection adds 3 more, overlapping neither each other nor the first 3.
    result = select(scored, ws, "--selection", "stochastic-batch", "--budget", 3, "--seed", 1)
    assert result.returncode == 0, result.stderr
    with CorrectionQueue(ws) as q:
        items = q.list()
    assert len(items) == 6 and [it.id for it in items[:3]] == [it.id for it in first]
    assert_disjoint(boxes(items))

    listing = ugafl("queue", "list", "--workspace", ws)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "SLIDE"]
    for it in items:
        line = next(l for l in lines[1:] if l.split()[0] == str(it.id))
        assert "pending" in line and it.slide in line and f"{it.x},{it.y} {it.width}x{it.height}" in line
        assert version in line and "stochastic-batch" in line
    assert "pending 6" in listing.stdout
    assert ugafl("queue", "list", "--workspace", ws, "--state", "corrected").stdout.startswith("no items")

    # Same seed on a fresh workspace: the same boxes.
    ws2 = fresh_workspace(scored, "ws_same_seed")
    result = select(scored, ws2, "--selection", "stochastic-batch", "--budget", 3, "--seed", 1)
    assert result.returncode == 0, result.stderr
    with CorrectionQueue(ws2) as q:
        assert boxes(q.list()) == boxes(first)

    # The simulated annotator corrects every item with the truth mask's region.
    result = ugafl("queue", "annotate", "--workspace", ws, "--data", scored["data"])
    assert result.returncode == 0, result.stderr
    assert "corrected 6 item(s)" in result.stdout
    manifest = load_manifest(scored["data"])
    records = {Path(r.path).stem: r for r in manifest.slides}
    with CorrectionQueue(ws) as q:
        assert q.counts()["corrected"] == 6
        for it in q.list():
            rec = records[it.slide]
            truth = load_mask(manifest.path_of(rec.mask)).region((it.x, it.y), (it.width, it.height), rec.mpp, it.mpp)
            correction = q.load_correction(it.id)
            assert correction.shape == (TINY.patch_size, TINY.patch_size) == truth.shape
            np.testing.assert_array_equal(correction, truth >= 0.5)
            assert q.get(it.id).reviewer == "simulated-annotator"
        assert sum(int(q.load_correction(it.id).sum()) for it in q.list()) > 0  # not a trivially empty truth

    shown = ugafl("queue", "show", "--workspace", ws, first[0].id)
    assert shown.returncode == 0, shown.stderr
    assert "slide" in shown.stdout and first[0].slide in shown.stdout and "corrected" in shown.stdout
    history = shown.stdout.split("history:")[1].splitlines()
    history = [l for l in history if l.strip()]
    assert len(history) == 2
    assert " add " in history[0] and "by selection" in history[0] and "-> pending" in history[0]
    assert " correct " in history[1] and "by simulated-annotator" in history[1] and "-> corrected" in history[1]

    # Nothing left open: annotating again submits nothing.
    again = ugafl("queue", "annotate", "--workspace", ws, "--data", scored["data"])
    assert again.returncode == 0 and "corrected 0 item(s)" in again.stdout


@pytest.mark.slow
def test_reset_stale_and_noisy_annotation(scored):
    ws = fresh_workspace(scored, "ws_stale")
    result = select(scored, ws, "--selection", "top-k", "--budget", 2, "--seed", 0, "--model-version", "v7",
                    "--round", 2)
    assert result.returncode == 0, result.stderr
    with CorrectionQueue(ws) as q:
        claimed = [q.next_pending("alice"), q.next_pending("bob")]
        assert all(it.state == "in_review" for it in claimed)
        assert all(it.model_version == "v7" and it.round == 2 and it.selection == "top-k" for it in q.list())
    # Claims younger than an hour stay.
    kept = ugafl("queue", "reset-stale", "--workspace", ws, "--older-than", 3600)
    assert kept.returncode == 0 and "returned 0 stale" in kept.stdout
    reset = ugafl("queue", "reset-stale", "--workspace", ws, "--older-than", 0, "--who", "admin")
    assert reset.returncode == 0, reset.stderr
    assert "returned 2 stale item(s)" in reset.stdout
    with CorrectionQueue(ws) as q:
        assert q.counts()["pending"] == 2 and q.counts()["in_review"] == 0
        assert all(it.reviewer is None for it in q.list())
        actions = [(e.action, e.who) for e in q.history(claimed[0].id)]
    assert actions == [("add", "selection"), ("claim", "alice"), ("reset_stale", "admin")]

    # Rater masks with a noisy boundary: submitted, same shape, deterministic per seed.
    result = ugafl("queue", "annotate", "--workspace", ws, "--data", scored["data"], "--rater", 1,
                   "--boundary-noise", 2, "--seed", 3, "--limit", 1)
    assert result.returncode == 0, result.stderr
    assert "corrected 1 item(s)" in result.stdout
    with CorrectionQueue(ws) as q:
        assert q.counts() == {"pending": 1, "in_review": 0, "corrected": 1, "rejected": 0}


@pytest.mark.slow
def test_errors_are_one_line_exit_2(scored, tmp_path):
    ws = fresh_workspace(scored, "ws_errors")
    empty = tmp_path / "no_slides_here"
    empty.mkdir()
    result = ugafl("queue", "select", "--workspace", ws, "--slides", empty, "--model", scored["ckpt"], "--method", "tta",
                   "--passes", 2, "--selection", "random", "--budget", 2, "--device", "cpu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no slide file named" in result.stderr and any(stem in result.stderr for stem in scored["rows"])
    with CorrectionQueue(ws) as q:
        assert q.list() == []  # nothing queued on failure

    result = select(scored, ws, "--selection", "most-uncertain", "--budget", 2)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "most-uncertain" in result.stderr

    # No scores for the method in the workspace.
    result = select(scored, tmp_path / "empty_ws", "--selection", "random", "--budget", 2)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no patch-score tables" in result.stderr

    # An unknown item and an unknown dataset.
    result = ugafl("queue", "show", "--workspace", ws, 99)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = ugafl("queue", "annotate", "--workspace", ws, "--data", tmp_path / "nodata")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_boundary_noise_is_seeded_and_bounded():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 12:28] = True
    outs = [perturb_boundary(mask, 3, np.random.default_rng([5, k])) for k in range(8)]
    again = [perturb_boundary(mask, 3, np.random.default_rng([5, k])) for k in range(8)]
    for a, b in zip(outs, again):
        np.testing.assert_array_equal(a, b)
    sizes = {int(o.sum()) for o in outs}
    assert len(sizes) > 1  # some grow, some shrink
    core = np.zeros_like(mask)
    core[13:27, 15:25] = True  # eroded by 3
    hull = np.zeros_like(mask)
    hull[7:33, 9:31] = True  # dilated by 3 (the box around the 4-connected diamond)
    for o in outs:
        assert o[core].all() and not o[~hull].any()
    assert perturb_boundary(mask, 0, np.random.default_rng(0)) is mask
    assert fit_mask(mask, 40, 40) is mask and fit_mask(mask, 20, 20).shape == (20, 20)


def test_format_table_is_fixed_width():
    from types import SimpleNamespace

    items = [SimpleNamespace(id=i, state=s, slide=f"slide_{i}", x=256 * i, y=0, width=256, height=256, score=0.5 / i,
                             selection="top-k", model_version="abc", reviewer=r, updated_at="2026-01-02T03:04:05.000001+00:00")
             for i, s, r in [(1, "pending", None), (12, "in_review", "alice")]]
    lines = format_table(items).splitlines()
    assert len(lines) == 3
    starts = [line.index("top-k") for line in lines[1:]]
    assert starts[0] == starts[1] == lines[0].index("SELECTION")
    assert "2026-01-02 03:04:05Z" in lines[1] and "alice" in lines[2] and " - " in lines[1]
