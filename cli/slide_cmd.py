"""`ugafl slide ...`: look at a whole-slide image before using it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


@click.group()
def slide() -> None:
    """Inspect whole-slide images."""


@slide.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None, help="Override the level-0 resolution, µm/px.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or a list for a folder).")
def info(path: Path, mpp: float | None, as_json: bool) -> None:
    """Vendor, pyramid levels, resolution, size and tissue fraction of the slide at PATH.

    Every level is test-read, so a slide that breaks mid-read fails here. PATH may be a folder:
    each slide in it is described, each unusable one gets one error line, and the exit code is 1
    if any failed (2 if it holds no slide file at all).
    """
    from ugafl.common.errors import UgaflError
    from ugafl.common.slide_scan import describe_slide, scan_folder

    if not path.is_dir():
        report = describe_slide(path, mpp)
        click.echo(json.dumps(report) if as_json else _text(report))
        return
    results = scan_folder(path, mpp)
    if not results:
        raise UgaflError(f"{path}: no slide files in this folder")
    for result in results:
        if result.error:
            click.echo(f"error: {result.error}", err=True)
        elif not as_json:
            click.echo(_text(result.info) + "\n")
    if as_json:
        click.echo(json.dumps([{"path": str(r.path), "ok": r.error is None, "error": r.error, "info": r.info} for r in results]))
    failed = sum(r.error is not None for r in results)
    click.echo(f"{len(results) - failed} of {len(results)} slides usable in {path}", err=True)
    if failed:
        sys.exit(1)


def _text(report: dict[str, Any]) -> str:
    lines = [
        f"path:     {report['path']}",
        f"vendor:   {report['vendor']}",
        f"mpp:      {report['mpp']:.4g} µm/px at level 0 (from {report['mpp_source']})",
        f"size:     {report['width']} x {report['height']} px, {report['width_mm']:.3g} x {report['height_mm']:.3g} mm",
        f"levels:   {report['level_count']}",
    ]
    lines += [f"  level {lv['index']}: {lv['width']} x {lv['height']} px, downsample {lv['downsample']:.4g}, {lv['mpp']:.4g} µm/px"
              for lv in report["levels"]]
    lines.append(f"tissue:   {100 * report['tissue_fraction']:.1f}% of the slide (mask at {report['tissue_mask_mpp']:.3g} µm/px)")
    return "\n".join(lines)
