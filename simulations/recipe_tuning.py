"""Tuning the local recipe on the training split: every variant of a grid file replays round 1 of
an experiment's arms (simulations.first_round_check) and is scored on the external centres'
candidate slides, never on the test slides. One JSON line per (variant, selection, seed) is
appended to OUT as it finishes, so a stopped run resumes where it was.

    python -m ugafl.simulations.recipe_tuning runs/benchmark simulations/grids/recipe_grid.toml runs/tuning.jsonl

The grid file: `selections = [...]`, `seeds = [...]`, `central_training = false`, and one
`[[variant]]` table per recipe with a `name` and LocalRecipe's fields (the others keep
LocalRecipe's defaults). A row named "central" holds the central model's own Dice there."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from dataclasses import fields
from pathlib import Path

import numpy as np

from ugafl.client.round.local_training import LocalRecipe
from ugafl.common.errors import ConfigError
from ugafl.common.log import configure, get_logger
from ugafl.simulations.first_round_check import first_round

log = get_logger("recipe_tuning")


def load_grid(path: Path) -> tuple[dict, list[tuple[str, LocalRecipe]]]:
    """(settings, [(variant name, recipe), ...]); ConfigError naming the file and the key."""
    raw = tomllib.loads(path.read_text())
    known = {f.name for f in fields(LocalRecipe)}
    variants = []
    for k, table in enumerate(raw.get("variant", [])):
        table = dict(table)
        name = table.pop("name", None)
        if not name:
            raise ConfigError(f"{path} [[variant]] #{k + 1}: no name")
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{path} [[variant]] {name}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(known))}")
        variants.append((name, LocalRecipe(**table)))
    settings = {"selections": raw.get("selections", ["random", "top-k"]), "seeds": raw.get("seeds", [0]),
                "central_training": bool(raw.get("central_training", False))}
    return settings, variants


def _done(out: Path) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    return {(r["variant"], r["selection"], r["seed"]): r for r in rows}


def _central_dice(run_dir: Path) -> dict[str, float]:
    from ugafl.server.evaluation import evaluate_model
    from ugafl.simulations.first_round_check import _external

    dice = evaluate_model(run_dir / "central.pt", run_dir / "data", "train", _external(run_dir, "RUMC"),
                          progress=False).centre_dice()
    dice["external"] = float(np.mean(list(dice.values())))
    return dice


def run_grid(run_dir: Path, grid: Path, out: Path, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Every (variant, selection, seed) of `grid` not yet in `out` (with shard (k, n): only every
    n-th of them from the k-th, so n processes can share the grid); all rows."""
    settings, variants = load_grid(grid)
    done = _done(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def append(row: dict) -> None:
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[(row["variant"], row["selection"], row["seed"])] = row

    if ("central", "-", -1) not in done:
        append({"variant": "central", "selection": "-", "seed": -1, "dice": _central_dice(run_dir)})
    todo = [(name, recipe, selection, seed) for name, recipe in variants for selection in settings["selections"]
            for seed in settings["seeds"]]
    for k, (name, recipe, selection, seed) in enumerate(todo):
        if k % shard[1] != shard[0] or (name, selection, seed) in _done(out):  # (another shard may have run it)
            continue
        started = time.time()
        dice = first_round(run_dir, selection, recipe, seed, split="train", central_trains=settings["central_training"])
        append({"variant": name, "selection": selection, "seed": seed, "recipe": recipe.__dict__,
                "dice": dice, "seconds": round(time.time() - started, 1)})
        log.info("%s / %s / seed %d: external %.3f (%.0f s)", name, selection, seed, dice["external"],
                 time.time() - started)
    return list(_done(out).values())


def table(rows: list[dict]) -> str:
    """Markdown: per variant, the external mean on the training split per selection (mean over
    seeds) and its lowest single run, beside the central model's."""
    central = next((r["dice"]["external"] for r in rows if r["variant"] == "central"), float("nan"))
    selections = sorted({r["selection"] for r in rows if r["variant"] != "central"})
    lines = [f"central model: {central:.3f}", "", "| variant | " + " | ".join(selections) + " | lowest run |",
             "|---|" + "---|" * (len(selections) + 1)]
    for name in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "central"):
        mine = [r for r in rows if r["variant"] == name]
        cells = []
        for s in selections:
            values = [r["dice"]["external"] for r in mine if r["selection"] == s]
            cells.append(f"{np.mean(values):.3f} ({len(values)})" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {min(r['dice']['external'] for r in mine):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("grid", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th row from the K-th (N processes share a grid)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    configure()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    k, n = (int(v) for v in args.shard.split("/"))
    rows = run_grid(args.run_dir, args.grid, args.out, (k, n))
    sys.stdout.write(table(rows) + "\n")


if __name__ == "__main__":
    main()
