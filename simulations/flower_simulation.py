"""Runs our ServerApp and ClientApp on Flower's simulation engine (Ray), one virtual SuperNode
per site folder. Thin glue: everything a site does is in ugafl.client.round."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from ugafl.common.errors import UgaflError
from ugafl.common.log import get_logger
from ugafl.simulations.extra import require_flower_simulation

log = get_logger("simulation")


class SimulationFailed(UgaflError):
    """Flower's simulation engine stopped with an error; the detail is in its log file."""

    exit_code = 1


def run_flower_simulation(overrides: dict, sites_dir: Path, num_sites: int, cpus_per_site: float = 1.0,
                          client_mods: list | None = None, log_file: Path | None = None) -> None:
    """Start the simulation and return when the ServerApp's main has finished. `client_mods`: Flower
    mods around every ClientApp handler (tests use one to make a site misbehave). With `log_file`,
    Flower's and Ray's own output (and what the sites print) goes to that file, not the terminal,
    and a failure is one SimulationFailed that names it."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    require_flower_simulation()
    from ugafl.client.flower_app import make_client_app
    from ugafl.server.flower_app import simulate

    where = f"; Flower's and Ray's log: {log_file}" if log_file is not None else ""
    log.info("Flower simulation: %d sites, %.1f CPU each%s", num_sites, cpus_per_site, where)
    try:
        simulate(make_client_app(str(sites_dir), client_mods), overrides, num_sites, cpus_per_site, log_file=log_file)
    except Exception as error:  # noqa: BLE001 - whatever stopped the engine: one line, the detail in the log
        if log_file is None:
            raise
        with open(log_file, "a", encoding="utf-8") as out:  # the ServerApp's own errors are not in Flower's log
            out.write("the simulation failed:\n")
            traceback.print_exception(error, file=out)
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise SimulationFailed(f"the federated simulation failed: {first}; see {log_file}") from error
