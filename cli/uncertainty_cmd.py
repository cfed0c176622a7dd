"""`ugafl uncertainty` and `ugafl uncertainty-report`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ugafl.common.correction_patch import CORRECTION_PATCH_UM

METHOD_CHOICE = click.Choice(["ensemble", "mc_dropout", "tta", "edue"])


@click.command("uncertainty")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--model", "models", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Checkpoint; repeat it for an ensemble's members (or give a folder of *.pt).")
@click.option("--method", type=METHOD_CHOICE, default="mc_dropout", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder: OUT/<slide>/...")
@click.option("--workspace", type=click.Path(path_type=Path), default=None, help="Site workspace: patch tables go to WS/patch_scores/.")
@click.option("--passes", type=click.IntRange(2, 64), default=8, show_default=True, help="T for mc_dropout and tta.")
@click.option("--mpp", type=float, default=None, help="Override the slides' level-0 resolution, µm/px.")
@click.option("--patch-um", type=click.FloatRange(min=1.0), default=CORRECTION_PATCH_UM, show_default=True,
              help="Side of a scored (and correctable) patch, µm.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--device", default="auto", show_default=True)
def uncertainty(target: Path, models: tuple[Path, ...], method: str, out: Path, workspace: Path | None, passes: int,
                mpp: float | None, patch_um: float, batch_size: int, device: str) -> None:
    """Per-pixel uncertainty, patch scores and a heatmap for a slide or every slide in a folder.

    A slide stored as several files (a DICOM series, MIRAX) is scored once, whether TARGET is one of
    its files or its folder, and is named by that folder when the folder holds it alone. A single
    slide that cannot be read: one error line, exit code 2."""
    from ugafl.cli.checks import checkpoints, folder_to_write
    from ugafl.client.round.slide_uncertainty import run_uncertainty
    from ugafl.common.errors import SlideError, UgaflError
    from ugafl.common.model import pick_device
    from ugafl.common.slide import open_slide
    from ugafl.common.slide_files import is_slide_folder, resolve
    from ugafl.common.slide_scan import candidate_files
    from ugafl.common.uncertainty_methods import load_method

    # Outputs and inputs are checked before any slide is computed.
    folder_to_write(out, "--out")
    if workspace is not None:
        folder_to_write(workspace, "--workspace")
    single = not target.is_dir() or is_slide_folder(target)  # a DICOM series' folder is one slide, named by it
    if single:
        target = resolve(target).path  # one file of a DICOM series: the series (see resolve for its name)
        open_slide(target, mpp).close()  # can't be opened: one line and exit 2 before any model loads
    elif not candidate_files(target):
        raise UgaflError(f"{target}: no slide files in this folder")
    paths = checkpoints(models, "--model")
    dev = pick_device(device, "--device")
    results = run_uncertainty(target, load_method(method, paths, dev, passes), out, workspace, mpp, batch_size, dev,
                              patch_um=patch_um)
    if single and results and results[0].error:
        raise SlideError(results[0].error)  # broke while being read
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            click.echo(f"error: {r.error}", err=True)
        else:
            s = r.summary
            if not r.patches:
                click.echo(f"{r.path.name}: 0 patches (no tissue to score) -> {r.out_dir}")
                continue
            click.echo(f"{r.path.name}: {r.patches} patches, mean {s['measure']} {s['mean_patch_score']:.4f}, "
                       f"predicted tumour {s['tumour_mm2']:.2f} mm² -> {r.out_dir}")
    if failed:
        raise SystemExit(1)


@click.command("uncertainty-report")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Dataset folder with manifest.json.")
@click.option("--model", "models", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Checkpoint for mc_dropout and tta (the first one given).")
@click.option("--ensemble", "ensemble", type=click.Path(path_type=Path), multiple=True, help="Ensemble members (repeat).")
@click.option("--edue", "edue", type=click.Path(path_type=Path), default=None, help="A model trained with --edue.")
@click.option("--methods", default="ensemble,mc_dropout,tta,edue", show_default=True, help="Comma-separated methods.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--centres", default=None, help="Comma-separated centres (default: all).")
@click.option("--passes", type=click.IntRange(2, 64), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--device", default="auto", show_default=True)
def uncertainty_report(data_dir: Path, models: tuple[Path, ...], ensemble: tuple[Path, ...], edue: Path | None, methods: str,
                       split: str, centres: str | None, passes: int, as_json: bool, device: str) -> None:
    """How well each method's uncertainty finds the model's errors, per centre."""
    from ugafl.cli.checks import existing_file
    from ugafl.common.errors import UgaflError
    from ugafl.common.manifest import load_manifest
    from ugafl.common.model import pick_device
    from ugafl.common.uncertainty_methods import METHODS, load_method
    from ugafl.simulations.uncertainty_report import format_report, method_quality

    dev = pick_device(device, "--device")
    sources = {"mc_dropout": list(models[:1]), "tta": list(models[:1]), "ensemble": list(ensemble), "edue": [edue] if edue else []}
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UgaflError(f"--methods {methods}: {', '.join(unknown) or 'none given'}; known: {', '.join(METHODS)}")
    load_manifest(data_dir)
    for option, paths in (("--model", models), ("--ensemble", ensemble), ("--edue", [edue] if edue else [])):
        for path in paths:
            existing_file(path, option, "checkpoint")
    rows = []
    for name in names:
        if not sources.get(name):
            click.echo(f"skipping {name}: no checkpoint given for it", err=True)
            continue
        rows += method_quality(load_method(name, sources[name], dev, passes), data_dir, split,
                               centres.split(",") if centres else None, dev, progress=not as_json)
    click.echo(json.dumps(rows, indent=1) if as_json else format_report(rows))
