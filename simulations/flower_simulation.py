"""Runs our ServerApp and ClientApp on Flower's simulation engine (Ray), one virtual SuperNode
per site folder. Thin glue: everything a site does is in ugafl.client.round."""

from __future__ import annotations

import os
from pathlib import Path

from ugafl.common.log import get_logger
from ugafl.simulations.extra import require_flower_simulation

log = get_logger("simulation")


def run_flower_simulation(overrides: dict, sites_dir: Path, num_sites: int, cpus_per_site: float = 1.0,
                          client_mods: list | None = None) -> None:
    """Start the simulation and return when the ServerApp's main has finished. `client_mods`: Flower
    mods around every ClientApp handler (tests use one to make a site misbehave)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    require_flower_simulation()
    from ugafl.client.flower_app import make_client_app
    from ugafl.server.flower_app import simulate

    log.info("Flower simulation: %d sites, %.1f CPU each", num_sites, cpus_per_site)
    simulate(make_client_app(str(sites_dir), client_mods), overrides, num_sites, cpus_per_site)
