"""The federated simulation on the synthetic centres: one site per centre on Flower's simulation
engine. The central centre (RUMC) trains on its own labelled slides every round; the others run
query -> (simulated) correction -> train on their training slides, whose labels they never see
except through the simulated annotator. Ends with Dice per centre on the test slides, before
(the central model) and after (the last round), as a table, JSON and a plot.

Layout under the run folder: coordinator/ (signing key pair), sites/<i>/ (site.toml, inbox/ with
links to the centre's training slides, ws/ the site workspace), federated/ (signed round
checkpoints, rounds.csv, dice_before_after.txt/json, federated.png).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ugafl.common.config import RunConfig, build_section, one_of
from ugafl.common.errors import ConfigError
from ugafl.common.log import get_logger
from ugafl.common.manifest import load_manifest
from ugafl.common.signing import generate_signing_key
from ugafl.server.evaluation import evaluate_model
from ugafl.server.federation.settings import FederationSettings
from ugafl.simulations.round_progress import RoundProgress

log = get_logger("federated")
progress = get_logger("progress")
ENGINES = ("flower", "in-process")



@dataclass(frozen=True)
class SimulationOptions:
    """[federation] keys for the simulation itself, not the ServerApp."""

    cpus_per_site: Annotated[float, Field(gt=0)] = 1.0  # Ray CPUs per site: 1 on 2 cores runs two sites at a time
    # "flower": Flower's simulation engine (Ray), the deployment's apps; "in-process": the same
    # round code with the sites' handlers called on this machine without Ray (benchmarks; see
    # simulations/in_process.py), cpus_per_site giving how many sites run at a time
    engine: Annotated[str, one_of(ENGINES)] = "flower"


SIM_ONLY = {f.name for f in fields(SimulationOptions)}
RUN_PATHS = ("central_checkpoint", "out_dir", "signing_key")  # set by the simulation for each run
SET_BY_SIMULATION = (*RUN_PATHS, "eval_data", "eval_centres", "min_nodes")  # a file may not set these


def federation_settings(cfg: RunConfig, **given: Any) -> tuple[FederationSettings, SimulationOptions]:
    """The run config's [federation], validated (a wrong key or type names the file, the section
    and the key), with `given` over it; placeholders stand in for the run paths not given, so that
    it can be checked before the run's folders exist."""
    at = cfg.where("federation")
    section = dict(cfg.federation)
    for key in SET_BY_SIMULATION:
        if key in section or key.replace("_", "-") in section:
            raise ConfigError(f"{at} {key}: set by the simulation itself (the run folder, the dataset, one site "
                              "per centre); leave it out of the file")
    options = build_section(SimulationOptions, {k: section.pop(k) for k in SIM_ONLY if k in section}, at)
    placeholders = {k: "-" for k in RUN_PATHS if k not in given}
    return FederationSettings.from_section(section, at, **placeholders, **given), options


def prepare_sites(run_dir: Path, data_dir: Path, central_centre: str, centres: list[str] | None = None,
                  annotator: str = "simulated", retrain: bool = False,
                  central_trains: bool = True) -> tuple[Path, list[str], Path]:
    """Site folders, one per centre (default: every centre of the dataset; index = Flower partition
    id). The external sites' corrections come from `annotator` ("person": nobody corrects), and
    with `retrain` they train every round on all their corrected patches, new or not. Without
    `central_trains` the central site does not train in the rounds (its data is already in the
    central model; with idle_sites = "keep" its vote is the global model as it was).
    (sites dir, centres, public key)."""
    key_dir = run_dir / "coordinator"
    private, public = key_dir / "signing.key", key_dir / "signing.pub"
    if not private.exists():
        generate_signing_key(private, public)
    manifest = load_manifest(data_dir)
    sites = run_dir / "sites"
    centres = list(centres or manifest.centres)
    for i, centre in enumerate(centres):
        folder = sites / str(i)
        inbox = folder / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        if centre != central_centre:  # the central site's labelled slides are its training data, not an inbox
            for rec in manifest.select(centre=centre, split="train"):
                link = inbox / Path(rec.path).name
                if not link.exists():
                    os.symlink(manifest.path_of(rec.path).resolve(), link)
        data = os.path.relpath(Path(data_dir).resolve(), folder.resolve())
        key = os.path.relpath(public.resolve(), folder.resolve())
        role = (f'role = "central"\ncentral_data = "{data}"\ncentral_centre = "{centre}"\n'
                f'train = {str(central_trains).lower()}\n'
                if centre == central_centre else
                f'annotator = "{annotator}"\nannotator_data = "{data}"\nretrain = {str(retrain).lower()}\n')
        (folder / "site.toml").write_text(
            f'# site {i}: centre {centre} (simulation)\n[site]\nname = "{centre}"\nworkspace = "ws"\nslides = "inbox"\n'
            f'trusted_keys = ["{key}"]\n{role}')
    return sites, centres, public


def share_uncertainty(sites: Path, shared: Path) -> None:
    """Point each site's uncertainty folder (WS/uncertainty) at SHARED/<site id>."""
    for folder in sorted(p for p in sites.iterdir() if (p / "site.toml").is_file()):
        target = shared / folder.name
        target.mkdir(parents=True, exist_ok=True)
        link = folder / "ws" / "uncertainty"
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.resolve(), link)


def _dice_table(before: dict[str, float], after: dict[str, float], reference: str) -> str:
    lines = [f"{'centre':<10} {'before':>8} {'after':>8} {'change':>8}"]
    for centre in before:
        lines.append(f"{centre:<10} {before[centre]:>8.3f} {after[centre]:>8.3f} {after[centre] - before[centre]:>+8.3f}")
    others = [c for c in before if c != reference]
    if others:
        mb = sum(before[c] for c in others) / len(others)
        ma = sum(after[c] for c in others) / len(others)
        lines.append(f"{'others':<10} {mb:>8.3f} {ma:>8.3f} {ma - mb:>+8.3f}   (mean of the {len(others)} external centres)")
    return "\n".join(lines)


def run_rounds(cfg: RunConfig, run_dir: Path, central_checkpoint: Path, data_dir: Path, client_mods: list | None = None,
               annotator: str = "simulated", retrain: bool = False, server_eval: bool = True,
               shared: Path | None = None, central_trains: bool = True) -> FederationSettings:
    """The rounds of `cfg.federation` from the central model, one site per centre (see
    `prepare_sites`), on the configured engine; signed round checkpoints in RUN/federated/. With
    `server_eval`, the coordinator also measures the central centre's test Dice every round.

    `shared` (the in-process engine): a folder that runs from the same central model and data
    share, so that work that is the same in each is done once: site i's uncertainty outputs live
    in SHARED/uncertainty/<i> (per model version, so only identical models reuse them) and the
    central site's train replies in SHARED/central-training (see simulations.in_process)."""
    federation_settings(cfg)  # refuse a bad [federation] before anything is written
    central_centre = cfg.central.centre
    out = run_dir / "federated"
    sites, centres, _ = prepare_sites(run_dir, data_dir, central_centre, annotator=annotator, retrain=retrain,
                                      central_trains=central_trains)
    settings, options = federation_settings(
        cfg, central_checkpoint=str(central_checkpoint), out_dir=str(out),
        signing_key=str(run_dir / "coordinator" / "signing.key"), eval_data=str(data_dir) if server_eval else "",
        eval_centres=central_centre, min_nodes=len(centres))
    if options.engine == "in-process":
        from ugafl.server.federation.rounds import run_federation
        from ugafl.simulations.in_process import InProcessSites

        if shared is not None:
            share_uncertainty(sites, shared / "uncertainty")
        workers = max(1, int((os.cpu_count() or 1) // options.cpus_per_site))
        run_federation(InProcessSites(sites, workers=min(workers, len(centres)),
                                      memo_dir=None if shared is None else shared / "central-training"), settings)
    else:
        from ugafl.simulations.flower_simulation import run_flower_simulation

        overrides = {k.replace("_", "-"): v for k, v in settings.to_dict().items()}  # the Flower run config's spelling
        run_flower_simulation(overrides, sites, len(centres), options.cpus_per_site, client_mods,
                              log_file=engine_log(run_dir))
    last = out / f"round-{settings.num_rounds:04d}.pt"
    if not last.is_file():
        where = "" if options.engine == "in-process" else f" and {engine_log(run_dir)}"
        raise ConfigError(f"the simulation ended without {last}; see the log above{where} for the failing round")
    return settings


def engine_log(run_dir: Path) -> Path:
    """Where Flower's and Ray's own output goes in a run (not the terminal)."""
    return Path(run_dir) / "logs" / "flower.log"


def run_federated(cfg: RunConfig, run_dir: str | Path, central_checkpoint: Path, data_dir: Path,
                  client_mods: list | None = None) -> dict:
    """The simulation of `cfg.federation` from the central model; returns the before/after summary."""
    run_dir = Path(run_dir)
    central_centre = cfg.central.centre
    out = run_dir / "federated"
    planned, options = federation_settings(cfg)
    engine = ("in process, without Flower" if options.engine == "in-process"
              else f"on Flower's simulation engine (Flower's and Ray's log: {engine_log(run_dir)})")
    progress.info("federation: %d rounds, %d sites %s", planned.num_rounds, len(load_manifest(data_dir).centres), engine)
    started = time.time()
    with RoundProgress(out / "rounds.csv", planned.num_rounds):
        settings = run_rounds(cfg, run_dir, central_checkpoint, data_dir, client_mods)
    seconds = round(time.time() - started, 1)
    last = out / f"round-{settings.num_rounds:04d}.pt"
    evaluated = time.time()

    before_path = out / "dice_before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = evaluate_model(central_checkpoint, data_dir, "test", progress=False).centre_dice()
        before_path.write_text(json.dumps(before, indent=1))
    after = evaluate_model(last, data_dir, "test", progress=False).centre_dice()
    table = _dice_table(before, after, central_centre)
    summary = {"before": before, "after": after, "rounds": settings.num_rounds, "aggregation": settings.aggregation,
               "selection": settings.selection, "budget": settings.budget, "seconds": seconds,
               "settings": settings.to_dict()}
    (out / "dice_before_after.txt").write_text(table + "\n")
    (out / "dice_before_after.json").write_text(json.dumps(summary, indent=1))
    from ugafl.simulations.figures import federated_figure

    federated_figure(out / "rounds.csv", before, after, out / "federated.png")
    progress.info("evaluation of round %d's model on the test slides: %.0f s", settings.num_rounds,
                  time.time() - evaluated)
    log.info("federated simulation done in %.0f s\n%s", seconds, table)
    return {"summary": summary, "table": table}
