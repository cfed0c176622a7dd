"""`ugafl experiment`: the paper's comparison of selection strategies (simulations/experiment.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("experiment")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="e.g. simulations/configs/quick.toml or paper.toml ([data] ... [federation], [experiment]).")
@click.option("--name", default=None, help="Run name: outputs go to runs/<name>/ [default: the config's file name].")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--report-only", is_flag=True, help="Run no arm: tables and plots from the arms complete so far (the data and the "
                   "central model are made first if missing).")
def experiment(config_path: Path, name: str | None, runs_dir: Path, report_only: bool) -> None:
    """Baseline, then federated rounds per strategy, method and seed (and the null and oracle
    reference arms) until 5 and 10 corrected patches per centre; tables (mean ± sd over seeds;
    with reference arms, paired differences with bootstrap intervals) and plots. A stopped run
    continues where it left off."""
    from ugafl.common.config import load_config
    from ugafl.common.errors import ConfigError
    from ugafl.simulations.experiment import ExperimentConfig, check_federation, run_experiment, table_markdown
    from ugafl.simulations.synth import SynthConfig

    cfg = load_config(config_path)
    if not cfg.federation:
        raise ConfigError(f"{config_path}: no [federation] section")
    cfg.section(ExperimentConfig, "experiment")  # every section checked before the run's folder is made
    cfg.section(SynthConfig, "data")
    check_federation(cfg)
    run_dir = runs_dir / (name or config_path.stem)
    summary = run_experiment(cfg, run_dir, report_only=report_only)
    click.echo(table_markdown(summary, cfg.section(ExperimentConfig, "experiment")))
    if (run_dir / "report.md").is_file():
        click.echo((run_dir / "report.md").read_text())
        click.echo(f"outputs in {run_dir}/: summary.json, report.md, table.md, results.json, dice_vs_patches.png, "
                   "per_centre.png, size_classes.png, arms/")
    else:
        click.echo(f"outputs in {run_dir}/: table.md, results.json, dice_vs_patches.png, per_centre.png, arms/")
