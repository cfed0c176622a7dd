"""`ugafl`: the root command. Each stage is a subcommand in its own module, a thin wrapper
over a library function; errors a user can act on become one line on stderr and exit code 2."""

from __future__ import annotations

import sys

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
    from ugafl.cli import slide_cmd

    cli.add_command(slide_cmd.slide)


_register()
