"""`ugafl slide info`, run as the user runs it: the installed console script in a subprocess,
looking at its exit code, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ugafl.cli.main import cli
from ugafl.common.slide import open_slide
from ugafl.common.tissue import detect_tissue

UGAFL = Path(sys.executable).parent / "ugafl"


def run_ugafl(*args: str) -> subprocess.CompletedProcess[str]:
    if not UGAFL.exists():
        pytest.fail(f"{UGAFL} missing: install the package with `pip install -e .[dev]`")
    return subprocess.run([str(UGAFL), *args], capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], path: Path) -> str:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(("name", "vendor"), [("small.svs", "aperio"), ("boxes_0.dcm", "dicom"), ("boxes_1.dcm", "dicom")])
def test_info_on_vendor_fixtures_as_json(fixtures_dir, name, vendor):
    result = run_ugafl("slide", "info", "--json", str(fixtures_dir / name))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["vendor"] == vendor
    assert report["mpp"] == pytest.approx(0.499) and report["mpp_source"] == "file"
    assert (report["width"], report["height"], report["level_count"]) == (16, 16, 1)
    assert report["width_mm"] == pytest.approx(16 * 0.499 / 1000)
    # what the library's tissue detection finds (16 px of slide: one 8 µm/px mask pixel, no tissue)
    with open_slide(fixtures_dir / name) as slide:
        assert report["tissue_fraction"] == detect_tissue(slide).fraction == 0.0


def test_info_text_on_small_svs(fixtures_dir):
    result = run_ugafl("slide", "info", str(fixtures_dir / "small.svs"))
    assert result.returncode == 0, result.stderr
    assert "vendor:   aperio" in result.stdout
    assert "0.499 µm/px at level 0 (from file)" in result.stdout
    assert "16 x 16 px" in result.stdout and "tissue:" in result.stdout


def test_implausible_resolution_is_refused_then_overridden(fixtures_dir):
    path = fixtures_dir / "boxes.tiff"
    line = assert_one_line_error(run_ugafl("slide", "info", str(path)), path)
    assert "352.8 µm/px" in line and "--mpp" in line
    result = run_ugafl("slide", "info", str(path), "--mpp", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["vendor"] == "generic-tiff" and report["mpp"] == 0.5 and report["mpp_source"] == "override"
    assert report["level_count"] == 4
    assert [(lv["width"], lv["height"]) for lv in report["levels"]] == [(300, 250), (150, 125), (75, 62), (37, 31)]
    assert [lv["mpp"] for lv in report["levels"]][:2] == [0.5, 1.0]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unreadable.svs", "cannot be read: Bogus marker length"),
        ("unopenable.tiff", "cannot be opened: Unsupported TIFF compression: 52479"),
        ("boxes.png", "not a slide format OpenSlide can read"),
        ("no-such-slide.svs", "no such file"),
    ],
)
def test_broken_files_give_one_line(fixtures_dir, name, reason):
    path = fixtures_dir / name
    line = assert_one_line_error(run_ugafl("slide", "info", str(path)), path)
    assert line == f"error: {path}: {reason}"


def test_info_on_the_synthetic_slide_in_process(synthetic_tiff):
    result = CliRunner().invoke(cli, ["slide", "info", "--json", str(synthetic_tiff.path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["width"], report["height"]) == (2048, 1536)
    assert (report["width_mm"], report["height_mm"]) == (pytest.approx(1.024), pytest.approx(0.768))
    assert [lv["mpp"] for lv in report["levels"]] == [0.5, 1.0, 2.0, 4.0]
    assert report["tissue_fraction"] == pytest.approx(synthetic_tiff.expected_fraction, abs=0.015)


def test_folder_scan_reports_each_bad_slide_and_goes_on(fixtures_dir, tmp_path):
    """The fixtures folder: 3 usable slides, 4 that each get one error line; exit code 1."""
    result = run_ugafl("slide", "info", str(fixtures_dir), "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    failed = {"boxes.png", "boxes.tiff", "unopenable.tiff", "unreadable.svs"}
    assert len(errors) == len(failed)
    assert {name for name in failed for line in errors if name in line} == failed
    report = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    # boxes_0.dcm and boxes_1.dcm share one SeriesInstanceUID: one DICOM slide, named by the first
    assert {n for n, r in report.items() if r["ok"]} == {"small.svs", "boxes_0.dcm"}
    assert "README.md" not in report  # documentation beside slides is not scanned
    assert report["small.svs"]["info"]["mpp"] == pytest.approx(0.499)
    # A folder of good slides only: exit code 0.
    good = tmp_path / "inbox"
    good.mkdir()
    for name in ("small.svs", "boxes_0.dcm"):
        (good / name).write_bytes((fixtures_dir / name).read_bytes())
    ok = run_ugafl("slide", "info", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "2 of 2 slides usable" in ok.stderr
