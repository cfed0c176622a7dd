"""`ugafl slide ...`: look at a whole-slide image before using it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ugafl.common.slide import Slide


@click.group()
def slide() -> None:
    """Inspect whole-slide images."""


@slide.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None, help="Override the level-0 resolution, µm/px.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(path: Path, mpp: float | None, as_json: bool) -> None:
    """Vendor, pyramid levels, resolution, size and tissue fraction of the slide at PATH.

    Every level is test-read, so a slide that breaks mid-read fails here.
    """
    from ugafl.common.slide import check_readable, open_slide
    from ugafl.common.tissue import detect_tissue  # scipy/scikit-image: only when needed

    with open_slide(path, mpp) as opened:
        check_readable(opened)
        tissue = detect_tissue(opened)
        report = _report(opened, mpp_source="override" if mpp is not None else "file")
        report["tissue_fraction"] = tissue.fraction
        report["tissue_mask_mpp"] = tissue.mpp
    if as_json:
        click.echo(json.dumps(report))
    else:
        _echo_text(report)


def _report(opened: Slide, mpp_source: str) -> dict[str, Any]:
    width, height = opened.dimensions
    return {
        "path": str(opened.path),
        "vendor": opened.vendor,
        "mpp": opened.mpp,
        "mpp_source": mpp_source,
        "width": width,
        "height": height,
        "width_mm": width * opened.mpp / 1000,
        "height_mm": height * opened.mpp / 1000,
        "level_count": len(opened.levels),
        "levels": [
            {"index": lv.index, "width": lv.width, "height": lv.height, "downsample": lv.downsample, "mpp": lv.mpp}
            for lv in opened.levels
        ],
    }


def _echo_text(report: dict[str, Any]) -> None:
    click.echo(f"path:     {report['path']}")
    click.echo(f"vendor:   {report['vendor']}")
    click.echo(f"mpp:      {report['mpp']:.4g} µm/px at level 0 (from {report['mpp_source']})")
    click.echo(
        f"size:     {report['width']} x {report['height']} px, "
        f"{report['width_mm']:.3g} x {report['height_mm']:.3g} mm"
    )
    click.echo(f"levels:   {report['level_count']}")
    for lv in report["levels"]:
        click.echo(
            f"  level {lv['index']}: {lv['width']} x {lv['height']} px, "
            f"downsample {lv['downsample']:.4g}, {lv['mpp']:.4g} µm/px"
        )
    click.echo(f"tissue:   {100 * report['tissue_fraction']:.1f}% of the slide (mask at {report['tissue_mask_mpp']:.3g} µm/px)")
