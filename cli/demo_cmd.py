"""`ugafl demo`: the README's main job.

The terminal gets one line per stage and per federated round, warnings and errors, and the Dice
table at the end; the package's other logs go to runs/<name>/logs/demo.log and Flower's and Ray's
own output to runs/<name>/logs/flower.log. Progress bars only on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def verbose_requested() -> bool:
    """Whether the root command was given -v/--verbose (then the terminal shows every log line)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def centre_table(dice: dict[str, float], reference: str) -> str:
    """The central model's pooled Dice per centre and its drop against the reference centre."""
    lines = [f"{'centre':<10} {'Dice':>8} {'drop':>8}"]
    for centre, d in dice.items():
        drop = "" if centre == reference else f"{dice.get(reference, d) - d:>8.3f}"
        lines.append(f"{centre:<10} {d:>8.3f} {drop}".rstrip())
    return "\n".join(lines)


@click.command("demo")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("configs/demo.toml"), show_default=True)
@click.option("--name", default="demo", show_default=True, help="Run name: outputs go to runs/<name>/.")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True)
def demo(config_path: Path, name: str, runs_dir: Path, device: str) -> None:
    """Synthetic centres, the central RUMC model, and its Dice per centre."""
    from ugafl.common.config import load_config
    from ugafl.common.log import progress_console
    from ugafl.simulations.demo import run_demo

    cfg = load_config(config_path)
    run_dir = runs_dir / name
    log_file = run_dir / "logs" / "demo.log"
    with progress_console(log_file, verbose=verbose_requested()):
        result = run_demo(cfg, run_dir, device=device, progress=sys.stderr.isatty())
    s = result["summary"]
    click.echo("")
    click.echo(f"outputs in {run_dir}/: dice.txt (per slide), summary.json, dice_per_centre.png, slides_per_centre.png; "
               f"logs in {run_dir / 'logs'}/")
    if "federated" not in result:
        click.echo(f"{s['reference_centre']} Dice {s['reference_dice']:.3f}; mean of the other centres "
                   f"{s['mean_other_centres']:.3f}; largest drop {s['largest_drop']:.3f}")
        click.echo("")
        click.echo(f"Dice per centre on the {cfg.evaluate.split} slides, central model ({s['reference_centre']}-trained):")
        click.echo(centre_table(s["dice"], s["reference_centre"]))
        return
    click.echo(f"federated: {run_dir / 'federated'}/: dice_before_after.txt, rounds.csv, federated.png, round-*.pt")
    click.echo("")
    click.echo(f"Dice per centre on the test slides: central model ({s['reference_centre']}-trained) and after "
               f"{result['federated']['summary']['rounds']} federated rounds:")
    click.echo(result["federated"]["table"])
