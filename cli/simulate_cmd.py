"""`ugafl simulate`: the federated simulation on the synthetic centres (Flower's simulation engine)."""

from __future__ import annotations

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
    from ugafl.common.config import load_config
    from ugafl.common.errors import ConfigError
    from ugafl.simulations.demo import run_demo
    from ugafl.simulations.extra import require_flower_simulation
    from ugafl.simulations.federated import run_federated

    cfg = load_config(config_path)
    if not cfg.federation:
        raise ConfigError(f"{config_path}: no [federation] section; nothing to simulate")
    require_flower_simulation()  # before the data and the central model, not after
    run_dir = runs_dir / name
    run_demo(cfg, run_dir, device=device, federate=False)
    result = run_federated(cfg, run_dir, run_dir / "central.pt", run_dir / "data")
    click.echo(result["table"])
    click.echo(f"outputs in {run_dir / 'federated'}/: dice_before_after.txt/.json, rounds.csv, federated.png, round-*.pt")
