"""`ugafl`: the root command. Each stage is a subcommand in its own module, a thin wrapper
over a library function; errors a user can act on become one line on stderr and exit code 2."""

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
    """Turns UgaflError into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UgaflError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """ugafl: uncertainty-guided annotation for pathology, federated with Flower."""
    configure(verbose)


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


_register()
