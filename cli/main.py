"""`ugafl`: the root command. Each stage is a subcommand in its own module, a thin wrapper
over a library function; errors a user can act on become one line on stderr and exit code 2
(3 when what a command reports on or needs is down, see DownError)."""

from __future__ import annotations

import os
import sys

# Slide-reading threads share the cores with torch's OpenMP pool; with OpenMP's default
# spin-waiting a descheduled thread stalls every step (measured 25x slower under contention).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from ugafl.common.errors import UgaflError
from ugafl.common.log import configure


class _Group(click.Group):
    """Turns UgaflError into one clear line instead of a traceback (exit code: its exit_code)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UgaflError as error:
            text = " / ".join(line.strip() for line in str(error).splitlines() if line.strip())  # always one line
            click.echo(f"error: {text}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=_Group)
@click.version_option(package_name="ugafl", prog_name="ugafl", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """ugafl: uncertainty-guided annotation for pathology, federated with Flower.

    Exit codes: 0 done; 1 some of several inputs failed (each said why); 2 a bad input or
    option (one line naming it; nothing was written); 3 what a status command reports on is down."""
    configure(verbose)


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Every command's --device, checked as it is parsed (before any work): one line naming it."""
    if value is not None and not ctx.resilient_parsing:
        from ugafl.common.model import pick_device

        pick_device(value, what="--device")
    return value


def _check_runs(ctx: click.Context, param: click.Parameter, value):
    """Every command's --runs (the folder runs/<name>/ go in): no file in its way."""
    if value is not None and not ctx.resilient_parsing:
        from ugafl.cli.checks import folder_to_write

        folder_to_write(value, "--runs")
    return value


_CHECKS = {"device": _check_device, "runs_dir": _check_runs}


def _add_checks(command: click.Command) -> None:
    """The options every command shares (--device, --runs) get one check each, made as they are
    parsed: before the command's work, whichever command it is."""
    for param in command.params:
        if isinstance(param, click.Option) and param.name in _CHECKS and param.callback is None:
            param.callback = _CHECKS[param.name]
            if param.name == "device":
                param.help = param.help or "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."
    for sub in getattr(command, "commands", {}).values():
        _add_checks(sub)


def _register() -> None:
    from ugafl.cli import demo_cmd, experiment_cmd, slide_cmd, synth_cmd, train_cmd, uncertainty_cmd
    from ugafl.cli import export_cmd
    from ugafl.cli import pki_cmd, queue_cmd, review_cmd, server_cmd, simulate_cmd, site_cmd

    cli.add_command(slide_cmd.slide)
    cli.add_command(synth_cmd.synth)
    cli.add_command(train_cmd.train_central_cmd)
    cli.add_command(train_cmd.evaluate_cmd)
    cli.add_command(demo_cmd.demo)
    cli.add_command(uncertainty_cmd.uncertainty)
    cli.add_command(uncertainty_cmd.uncertainty_report)
    cli.add_command(queue_cmd.queue)
    cli.add_command(review_cmd.review)
    cli.add_command(simulate_cmd.simulate)
    cli.add_command(experiment_cmd.experiment)
    cli.add_command(pki_cmd.pki)
    cli.add_command(site_cmd.site)
    cli.add_command(server_cmd.server)
    cli.add_command(export_cmd.export)
    _add_checks(cli)


_register()
