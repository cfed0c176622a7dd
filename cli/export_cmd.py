"""`ugafl export`: a checkpoint's network in a format other tools load."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True, help="Checkpoint to export.")
@click.option("--format", "fmt", metavar="FORMAT", required=True,
              help="torchscript (one file, plain torch.jit.load), onnx (one file, onnxruntime) or monai-bundle "
                   "(a folder, monai.bundle.load).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File to write (a folder for monai-bundle); its parent folder must exist.")
@click.option("--force", is_flag=True,
              help="Replace an existing OUT: a file, or a bundle folder ugafl exported (never another folder).")
def export(model_path: Path, fmt: str, out: Path, force: bool) -> None:
    """Export the network of a checkpoint with its metadata: resolution (µm/px), patch size,
    channels and normalisation, classes, what the output means, ugafl's version and the
    checkpoint's SHA-256.

    The export is loaded back with the format's own loader and checked against the checkpoint's
    model before it is put in place; nothing is left behind when anything fails. An existing OUT
    is refused unless --force.
    """
    from ugafl.common.export import export_model

    result = export_model(model_path, out, fmt, force=force)
    click.echo(f"wrote {result.path} ({result.fmt}; {result.metadata['mpp']} µm/px, {result.metadata['patch_size']} px "
               f"patches, output {result.metadata['output']['kind']}; max abs difference to the checkpoint's model "
               f"{result.max_abs_diff:.2g})")
