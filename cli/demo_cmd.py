"""`ugafl demo`: the README's main job."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("configs/demo.toml"), show_default=True)
@click.option("--name", default="demo", show_default=True, help="Run name: outputs go to runs/<name>/.")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True)
def demo(config_path: Path, name: str, runs_dir: Path, device: str) -> None:
    """Synthetic centres, the central RUMC model, and its Dice per centre."""
    from ugafl.common.config import load_config
    from ugafl.simulations.demo import run_demo

    result = run_demo(load_config(config_path), runs_dir / name, device=device)
    s = result["summary"]
    click.echo(result["table"])
    click.echo("")
    click.echo(f"{s['reference_centre']} Dice {s['reference_dice']:.3f}; mean of the other centres {s['mean_other_centres']:.3f}; "
               f"largest drop {s['largest_drop']:.3f}")
    click.echo(f"outputs in {runs_dir / name}/: dice.txt, dice.json, dice_per_centre.png, slides_per_centre.png, summary.json")
    if "federated" in result:
        click.echo("")
        click.echo("Federated rounds (Flower simulation), Dice per centre on the test slides:")
        click.echo(result["federated"]["table"])
        click.echo(f"outputs in {runs_dir / name / 'federated'}/: dice_before_after.txt, rounds.csv, federated.png")
