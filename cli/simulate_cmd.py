"""`ugafl simulate`: the federated simulation on the synthetic centres (Flower's simulation engine)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("simulate")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="Run config with [data], [model], [train], [central] and [federation].")
@click.option("--name", default="federated", show_default=True, help="Run name: outputs go to runs/<name>/.")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True)
def simulate(config_path: Path, name: str, runs_dir: Path, device: str) -> None:
    """Synthetic centres and the central model (reused when present), then federated rounds with
    one simulated site per centre; Dice per centre before and after."""
    from ugafl.cli.demo_cmd import verbose_requested
    from ugafl.common.config import load_config
    from ugafl.common.errors import ConfigError
    from ugafl.common.log import progress_console
    from ugafl.simulations.demo import run_demo
    from ugafl.simulations.extra import require_flower_simulation
    from ugafl.simulations.federated import run_federated

    cfg = load_config(config_path)
    if not cfg.federation:
        raise ConfigError(f"{config_path}: no [federation] section; nothing to simulate")
    require_flower_simulation()  # before the data and the central model, not after
    run_dir = runs_dir / name
    # one line per stage and round on the terminal; the other logs in LOGS/simulate.log, Flower's and Ray's in LOGS/flower.log
    with progress_console(run_dir / "logs" / "simulate.log", verbose=verbose_requested()):
        run_demo(cfg, run_dir, device=device, federate=False, progress=sys.stderr.isatty())
        result = run_federated(cfg, run_dir, run_dir / "central.pt", run_dir / "data")
    click.echo("")
    click.echo(f"outputs in {run_dir / 'federated'}/: dice_before_after.txt/.json, rounds.csv, federated.png, round-*.pt; "
               f"logs in {run_dir / 'logs'}/")
    click.echo("")
    click.echo(f"Dice per centre on the test slides, central model and after {result['summary']['rounds']} rounds:")
    click.echo(result["table"])
