"""`ugafl synth`: generate the synthetic multi-centre dataset."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Dataset folder (manifest.json lands here).")
@click.option("--slides-per-centre", type=click.IntRange(1), default=6, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--centres", default="RUMC,UMCU,LabPON,CWZ,RST", show_default=True, help="Comma-separated centre names.")
@click.option("--format", "file_format", type=click.Choice(["by-centre", "svs", "tiff"]), default="by-centre", show_default=True,
              help="Slide file format; by-centre uses each centre's scanner (Aperio SVS or generic TIFF).")
@click.option("--scan-mpp", type=float, default=0.5, show_default=True, help="Level-0 resolution of the slides, µm/px.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes (default: one per core).")
def synth(out: Path, slides_per_centre: int, seed: int, centres: str, file_format: str, scan_mpp: float, workers: int | None) -> None:
    """Generate synthetic lymph-node slides for five centres, with tumour and raters' masks."""
    from ugafl.simulations.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(slides_per_centre=slides_per_centre, seed=seed, centres=tuple(c.strip() for c in centres.split(",") if c.strip()),
                      file_format=file_format, scan_mpp=scan_mpp)
    manifest = generate_dataset(out, cfg, workers=workers)
    counts = {c: len(manifest.select(centre=c)) for c in manifest.centres}
    click.echo(f"{len(manifest.slides)} slides in {out}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
