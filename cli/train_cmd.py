"""`ugafl train-central` and `ugafl evaluate`."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import click


@click.command("train-central")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Dataset folder with manifest.json.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint file to write.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="Run config (TOML).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Override [train] steps.")
@click.option("--arch", type=click.Choice(["unet", "dynunet"]), default=None, help="Override [model] arch.")
@click.option("--members", type=click.IntRange(1), default=None, help="Train an ensemble of N members (OUT-m0 ... OUT-m{N-1}).")
@click.option("--edue", is_flag=True, help="Add EDUE's disagreement head, trained on the raters' masks.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint at OUT (else refused).")
def train_central_cmd(data_dir: Path, out: Path, config_path: Path | None, steps: int | None, arch: str | None,
                      members: int | None, edue: bool, device: str, force: bool) -> None:
    """Train the central model on one centre's (default RUMC) training slides."""
    from ugafl.cli.checks import file_to_write
    from ugafl.common.errors import UgaflError
    from ugafl.common.config import load_config
    from ugafl.common.manifest import load_manifest
    from ugafl.server.central_training import member_paths, train_central

    cfg = load_config(config_path)
    file_to_write(out, "--out")
    there = [p for p in (out, *member_paths(out, members or cfg.central.members)) if p.exists()]
    if there and not force:  # hours of training, or the federation's central.pt, are not replaced by a typo
        raise UgaflError(f"--out {there[0]}: exists; give another name, or --force to replace it")
    load_manifest(data_dir)  # names the folder or file when there is no dataset
    model_cfg = replace(cfg.model, arch=arch) if arch else cfg.model
    model_cfg = replace(model_cfg, disagreement_head=True) if edue else model_cfg
    train_cfg = replace(cfg.train, steps=steps) if steps else cfg.train
    central = replace(cfg.central, members=members) if members else cfg.central
    for path in train_central(data_dir, out, model_cfg, train_cfg, central, device=device):
        click.echo(f"wrote {path}")


@click.command("evaluate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True, help="Checkpoint to evaluate.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Dataset folder with manifest.json.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--centres", default=None, help="Comma-separated centres (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--device", default="auto", show_default=True)
def evaluate_cmd(model_path: Path, data_dir: Path, split: str, centres: str | None, as_json: bool, device: str) -> None:
    """Dice per slide and pooled per centre."""
    from ugafl.common.errors import UgaflError
    from ugafl.common.manifest import load_manifest
    from ugafl.server.evaluation import evaluate_model, format_table

    manifest = load_manifest(data_dir)
    wanted = [c.strip() for c in centres.split(",") if c.strip()] if centres else None
    unknown = [c for c in wanted or [] if c not in manifest.centres]
    if unknown or wanted == []:
        raise UgaflError(f"--centres {centres}: {', '.join(unknown) or 'no centre'} not in {manifest.root}; centres "
                         f"there: {', '.join(manifest.centres)}")
    ev = evaluate_model(model_path, data_dir, split, wanted, device=device, progress=not as_json)
    click.echo(json.dumps(asdict(ev), indent=1) if as_json else format_table(ev))
