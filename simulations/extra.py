"""The `simulation` extra: what only simulations need beyond a hospital's or coordinator's install
(`pip install ugafl`). Flower's simulation engine runs on Ray, and tifffile needs imagecodecs to
write the synthetic slides' JPEG tiles. Without them a simulation stops with one line that says
what to install (the CLI prints it and exits 2), not a traceback from inside Ray or tifffile."""

from __future__ import annotations

import importlib.util

from ugafl.common.errors import UgaflError

INSTALL = "pip install 'ugafl[simulation]'"


class MissingExtraError(UgaflError):
    """A simulation needs a package that only the `simulation` extra installs."""


def require_simulation_extra(module: str, needed_for: str) -> None:
    """Raises MissingExtraError naming the extra when `module` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{needed_for} needs the package '{module}', which is not installed; "
                                f"it comes with the simulation extra: {INSTALL}")


def require_flower_simulation() -> None:
    require_simulation_extra("ray", "Flower's simulation engine")


def require_jpeg_writer() -> None:
    require_simulation_extra("imagecodecs", "writing the synthetic slides' JPEG tiles (tifffile)")
