"""`ugafl synth`: generate the synthetic multi-centre dataset, or one slide of real Camelyon size."""

from __future__ import annotations

from pathlib import Path

import click

_DATASET_ONLY = ("slides_per_centre", "file_format", "scan_mpp")
_SIZES = ("1/16", "1/4", "full")


@click.command()
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Dataset folder (manifest.json lands here).")
@click.option("--slides-per-centre", type=click.IntRange(1), default=6, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--centres", default="RUMC,UMCU,LabPON,CWZ,RST", show_default=True, help="Comma-separated centre names.")
@click.option("--format", "file_format", type=click.Choice(["by-centre", "svs", "tiff"]), default="by-centre", show_default=True,
              help="Slide file format; by-centre uses each centre's scanner (Aperio SVS or generic TIFF).")
@click.option("--scan-mpp", type=float, default=0.5, show_default=True, help="Level-0 resolution of the slides, µm/px.")
@click.option("--size", type=click.Choice(_SIZES), default=None,
              help="Instead of a dataset, one slide of real Camelyon size (full: 100,000 x 200,000 px at 0.24 µm/px; "
                   "1/4 and 1/16 of its area), written tile by tile to OUT/<centre>_real_<size>.tif; the first of --centres.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes, or with --size threads (default: one per core).")
def synth(out: Path, slides_per_centre: int, seed: int, centres: str, file_format: str, scan_mpp: float, size: str | None,
          workers: int | None) -> None:
    """Generate synthetic lymph-node slides for five centres, with tumour and raters' masks."""
    from ugafl.cli.checks import folder_to_write
    from ugafl.common.errors import ConfigError, UgaflError

    names = tuple(c.strip() for c in centres.split(",") if c.strip())
    folder_to_write(out, "--out")
    if size is not None:
        _real_size(out, size, names, seed, workers)
        return
    from ugafl.simulations.centres import get_centre
    from ugafl.simulations.synth import SynthConfig, generate_dataset

    if not names:
        raise UgaflError("--centres: no centre named")
    for name in names:  # all checked before the first slide is made
        try:
            get_centre(name, SynthConfig.world)
        except ConfigError as error:
            raise UgaflError(f"--centres: {error}") from None
    if not 0.1 <= scan_mpp <= 20:
        raise UgaflError(f"--scan-mpp {scan_mpp:g}: expected a resolution between 0.1 and 20 µm/px")

    cfg = SynthConfig(slides_per_centre=slides_per_centre, seed=seed, centres=names, file_format=file_format, scan_mpp=scan_mpp)
    manifest = generate_dataset(out, cfg, workers=workers)
    counts = {c: len(manifest.select(centre=c)) for c in manifest.centres}
    click.echo(f"{len(manifest.slides)} slides in {out}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))


def _real_size(out: Path, size: str, centres: tuple[str, ...], seed: int, workers: int | None) -> None:
    import os

    from ugafl.common.errors import ConfigError
    from ugafl.simulations.centres import get_centre
    from ugafl.simulations.real_size import SIZES, write_real_size_slide

    ctx = click.get_current_context()
    given = [name for name in _DATASET_ONLY if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"--size writes one slide; {', '.join('--' + g.replace('_', '-') for g in given)} "
                               "only apply to a dataset")
    if not centres:
        raise click.BadParameter("no centre named", param_hint="--centres")
    world = "benchmark-2"
    try:
        get_centre(centres[0], world)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--centres") from None
    path = out / f"{centres[0]}_real_{size.replace('/', 'of')}.tif"
    record = write_real_size_slide(path, SIZES[size], centre=centres[0], world=world, seed=seed,
                                   workers=workers or os.cpu_count() or 1, progress=True)
    click.echo(f"{path}: {record.width} x {record.height} px at {record.mpp:g} µm/px, {record.levels} levels, "
               f"{len(record.placements)} sections")
