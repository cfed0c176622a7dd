"""What a slide is (vendor, levels, resolution, size, tissue), for one file or a whole folder.
A folder scan records an unreadable slide with its reason and goes on with the others; a slide
stored as several files (a DICOM series, MIRAX) is one slide (common.slide_files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ugafl.common.errors import SlideError
from ugafl.common.log import get_logger
from ugafl.common.slide_files import NOT_SLIDES, slides_in

__all__ = ["NOT_SLIDES", "ScanResult", "candidate_files", "describe_slide", "scan_folder"]

log = get_logger("slide_scan")


@dataclass(frozen=True)
class ScanResult:
    path: Path
    info: dict[str, Any] | None  # describe_slide's report, when the slide is usable
    error: str | None  # one line naming the file and the reason, when it is not


def describe_slide(path: str | Path, mpp: float | None = None) -> dict[str, Any]:
    """Opens the slide, test-reads every level, detects tissue; returns a JSON-able report.
    Raises SlideError (one line, naming the file) when the slide can't be used."""
    from ugafl.common.slide import check_readable, open_slide
    from ugafl.common.tissue import detect_tissue  # scipy/scikit-image: only when needed

    with open_slide(path, mpp) as opened:
        check_readable(opened)
        tissue = detect_tissue(opened)
        width, height = opened.dimensions
        return {
            "path": str(opened.path),
            "vendor": opened.vendor,
            "mpp": opened.mpp,
            "mpp_source": "override" if mpp is not None else "file",
            "width": width,
            "height": height,
            "width_mm": width * opened.mpp / 1000,
            "height_mm": height * opened.mpp / 1000,
            "level_count": len(opened.levels),
            "levels": [{"index": lv.index, "width": lv.width, "height": lv.height, "downsample": lv.downsample, "mpp": lv.mpp}
                       for lv in opened.levels],
            "tissue_fraction": tissue.fraction,
            "tissue_mask_mpp": tissue.mpp,
        }


def candidate_files(folder: str | Path) -> list[Path]:
    """One path per slide in `folder`, sorted: its non-hidden files that could be slides, a DICOM
    series once (by its level-0 file), and subfolders that hold a multi-file slide (see
    common.slide_files; other subfolders are not scanned)."""
    return [slide.path for slide in slides_in(folder)]


def scan_folder(folder: str | Path, mpp: float | None = None) -> list[ScanResult]:
    """describe_slide for every candidate file; failures are recorded, never raised."""
    results = []
    for path in candidate_files(folder):
        try:
            results.append(ScanResult(path, describe_slide(path, mpp), None))
        except SlideError as error:
            log.debug("%s", error)
            results.append(ScanResult(path, None, str(error)))
    return results
