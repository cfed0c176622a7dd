"""The paper's experiment on the synthetic centres: does correcting the patches the model is most
uncertain about lift Dice more than correcting random ones?

One dataset and one central (RUMC) model serve every arm. An arm is a selection strategy, an
uncertainty method and a seed, or a reference arm and a seed. It runs federated rounds in which
every external centre has `budget` patches corrected per round by the simulated annotator, until
each centre has the largest count in `patches`. Dice per centre on the test slides is measured
after the round at which each count is reached. Strategies differ only in which patches they
choose: the data, the model, the training schedule and the seeds are the same.

The reference arms run the same rounds, schedule and seeds:
- `null`: the external sites' queues are filled but nobody corrects them (they never train), so
  any change is the central site's own training and the averaging;
- `oracle`: every tissue patch of each external site's candidate slides is corrected in round 1,
  and the site trains on all of them every round.
The gap between them is what corrections can buy.

The non-federated reference fine-tunes the central model on RUMC's patch bank plus every centre's
corrected patches pooled, for as many steps as the federated rounds took together.

Layout under the run folder: data/, central.pt, baseline.json, arms/<arm>/ (a federated run folder,
plus result.json once the arm is complete: resumable), results.json, table.md, plots, config.toml,
versions.json, and with reference arms summary.json (experiment_stats, experiment_report).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from ugafl.common.atomic import atomic_write_text
from ugafl.common.config import FieldProblem, RunConfig, one_of
from ugafl.common.errors import ConfigError
from ugafl.common.log import get_logger
from ugafl.common.selection import SELECTION_NAMES
from ugafl.common.uncertainty_methods import METHODS

log = get_logger("experiment")

PAPER = {"baseline": 0.66, 5: 0.76, 10: 0.84}  # the published external-centre Dice
REFERENCES = ("null", "oracle")
ORACLE_BUDGET = 1_000_000  # more than any site's candidate patches: the oracle queues every one in round 1


@dataclass(frozen=True)
class Arm:
    """One arm: `kind` is "strategy" (a selection with an uncertainty method) or a reference."""

    kind: str
    seed: int
    selection: str = "random"
    method: str = "tta"

    @property
    def name(self) -> str:
        return arm_name(self.method, self.selection, self.seed) if self.kind == "strategy" else f"{self.kind}-s{self.seed}"

    @property
    def label(self) -> str:
        """The arm's group: every seed of it."""
        return f"{self.method} / {self.selection}" if self.kind == "strategy" else self.kind


@dataclass(frozen=True)
class ExperimentConfig:
    """The [experiment] section (validated with `RunConfig.section`, which calls `check`)."""

    RENAMED: ClassVar[dict[str, str]] = {"strategies": "selections"}

    selections: Annotated[tuple[Annotated[str, one_of(SELECTION_NAMES)], ...], Field(min_length=1)] = (
        "random", "top-k", "stochastic-batch")
    methods: Annotated[tuple[Annotated[str, one_of(METHODS)], ...], Field(min_length=1)] = ("tta",)
    seeds: Annotated[tuple[int, ...], Field(min_length=1)] = (0, 1, 2)
    budget: Annotated[int, Field(ge=1)] = 5  # patches corrected per centre per round
    # per centre: Dice is measured once each count is reached
    patches: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (5, 10)
    pooled_reference: bool = True
    references: tuple[Annotated[str, one_of(REFERENCES)], ...] = ()  # "null", "oracle": see the module's docstring
    # False: the central site does not re-train on its own data in the rounds (it votes for the
    # global model as it is), so that only the corrections change the model (the null arm's test)
    central_trains: bool = True
    # "train": Dice on the candidate slides instead of the test slides, for tuning a recipe or a
    # scoring (never on the test slides); the report's "test slides" are then those
    eval_split: Annotated[str, one_of(("test", "train"))] = "test"

    def check(self) -> None:
        """FieldProblem unless every count in `patches` is a multiple of `budget`."""
        if any(p % self.budget for p in self.patches):
            raise FieldProblem("patches", f"{list(self.patches)} must be multiples of budget ({self.budget})")


def arm_name(method: str, strategy: str, seed: int) -> str:
    return f"{method}-{strategy}-s{seed}"


def _dice(path: Path, data: Path, split: str = "test") -> dict[str, float]:
    from ugafl.server.evaluation import evaluate_model

    return evaluate_model(path, data, split, progress=False).centre_dice()


SLIDE_KEYS = ("slide_id", "centre", "label_type", "tp", "fp", "fn")


def _cached_evaluation(cache: Path, content_hash: str, split: str) -> Path:
    """Where the evaluation of weights `content_hash` on `split` is kept (test: the older, bare name)."""
    return cache / f"{content_hash[:24]}{'' if split == 'test' else '-' + split}.json"


def evaluate_test_slides(path: Path, data: Path, cache: Path | None = None,
                         split: str = "test") -> tuple[dict[str, float], list[dict]]:
    """The model's pooled Dice per centre on the `split` slides (the test slides unless tuning),
    and the per-slide counts behind it. With `cache`, a model whose weights were evaluated before
    (the same content hash: a null arm's rounds leave the central model as it was) is not
    evaluated again."""
    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.server.evaluation import evaluate_model

    known = None if cache is None else _cached_evaluation(cache, load_checkpoint(path).content_hash, split)
    if known is not None and known.is_file():
        saved = json.loads(known.read_text())
        return saved["dice"], saved["slides"]
    ev = evaluate_model(path, data, split, progress=False)
    dice, rows = ev.centre_dice(), [{k: s[k] for k in SLIDE_KEYS} for s in ev.slides]
    if known is not None:
        known.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(known, json.dumps({"dice": dice, "slides": rows}))
    return dice, rows


def tiles(patches: np.ndarray, size: int) -> np.ndarray:
    """(N*k, size, size, ...) tiles, patch by patch, covering every pixel of each (N, H, W, ...) patch: a grid of
    stride `size` whose last row and column end at the patch's edge (so they may overlap)."""
    height, width = patches.shape[1:3]
    if height < size or width < size:
        raise ValueError(f"a {height}x{width} px patch is smaller than a {size} px tile")
    tops = sorted({*range(0, height - size + 1, size), height - size})
    lefts = sorted({*range(0, width - size + 1, size), width - size})
    grid = np.stack([patches[:, t:t + size, l:l + size] for t in tops for l in lefts], axis=1)
    return grid.reshape(-1, *grid.shape[2:])  # patch by patch


def pooled_reference(cfg: RunConfig, central: Path, data: Path, workspaces: list[Path], steps: int, seed: int,
                     out: Path, split: str = "test") -> dict[str, float]:
    """Fine-tune the central model on RUMC's bank plus every corrected patch pooled (whole, as tiles of
    the bank's size: the paper's way); Dice per centre on `split`."""
    import torch

    from ugafl.client.queue.corrected import corrected_patches
    from ugafl.client.round.local_training import local_schedule
    from ugafl.common.central_bank import round_bank
    from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
    from ugafl.common.model import pick_device
    from ugafl.common.training import train_segmentation
    from ugafl.simulations.federated import federation_settings

    ckpt = load_checkpoint(central)
    bank = round_bank(data, ckpt.model_config, cfg.central.centre, seed)
    size = bank.images.shape[1]
    images, labels = [bank.images], [bank.labels]
    for ws in workspaces:
        imgs, masks, _ = corrected_patches(ws)
        if len(imgs):  # the whole corrected patch, as tiles of the bank's size
            images.append(tiles(imgs, size))
            labels.append(tiles(masks, size))
    torch.manual_seed(seed)
    model = ckpt.model
    pooled = np.concatenate(images)
    lr = federation_settings(cfg)[0].lr
    train_segmentation(model, pooled, np.concatenate(labels), local_schedule(pooled, steps, lr, seed), pick_device("auto"),
                       progress=False, num_classes=ckpt.model_config.num_classes)
    save_checkpoint(out, model, ckpt.model_config, extra={"pooled_reference": {"patches": len(pooled)}})
    return _dice(out, data, split)


def run_arm(cfg: RunConfig, exp: ExperimentConfig, arm_dir: Path, central: Path, data: Path, arm: Arm) -> dict:
    """One arm (resumable: a complete arm has result.json)."""
    from ugafl.server.federation.checkpoints import round_path
    from ugafl.simulations.federated import federation_settings, run_rounds

    from ugafl.common.checkpoint import load_checkpoint

    central_hash = load_checkpoint(central).content_hash
    done = arm_dir / "result.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("central", central_hash) == central_hash:  # (arms recorded before the key are taken as they are)
            return kept
        log.warning("arm %s ran from another central model (%s); running it again", arm_dir.name, kept["central"][:12])
    if arm_dir.exists():  # stopped mid-arm: its sites' queues hold a round that never finished, so start it afresh
        log.info("arm %s was stopped before it finished; running it again from the start", arm_dir.name)
        shutil.rmtree(arm_dir)
    started = time.time()
    rounds = max(exp.patches) // exp.budget
    budget = ORACLE_BUDGET if arm.kind == "oracle" else exp.budget
    federation = {**cfg.federation, "selection": arm.selection, "method": arm.method, "seed": arm.seed,
                  "budget": budget, "num_rounds": rounds, "run_name": arm_dir.name}
    run_rounds(replace(cfg, federation=federation), arm_dir, central, data,
               annotator="person" if arm.kind == "null" else "simulated", retrain=arm.kind == "oracle",
               server_eval=False, shared=arm_dir.parent.parent / "shared", central_trains=exp.central_trains)
    rounds_s = round(time.time() - started, 1)
    out = arm_dir / "federated"
    result: dict = {"arm": arm_dir.name, "kind": arm.kind, "method": arm.method, "selection": arm.selection,
                    "seed": arm.seed, "central": central_hash, "dice": {}, "slides": {}}
    for p in exp.patches:
        result["dice"][str(p)], result["slides"][str(p)] = evaluate_test_slides(
            round_path(out, p // exp.budget), data, arm_dir.parent.parent / "shared" / "evaluations", exp.eval_split)
    if exp.pooled_reference and arm.kind == "strategy":
        steps = rounds * federation_settings(cfg)[0].local_steps
        sites = sorted(p for p in (arm_dir / "sites").iterdir() if p.is_dir())
        result["pooled"] = pooled_reference(cfg, central, data, [s / "ws" for s in sites], steps, arm.seed,
                                            arm_dir / "pooled.pt", exp.eval_split)
    result["seconds"] = round(time.time() - started, 1)
    result["seconds_rounds"] = rounds_s
    result["versions"] = versions()  # versions.json is the last invocation's; a resumed run's arms may differ
    atomic_write_text(done, json.dumps(result, indent=1))
    log.info("arm %s done in %.0f s (rounds %.0f s)", arm_dir.name, result["seconds"], rounds_s)
    return result


def _remember_evaluation(model: Path, dice_path: Path, slides_path: Path, cache: Path, split: str = "test") -> None:
    """Put an evaluation made before the cache existed (the baseline of an older run) in it."""
    from ugafl.common.checkpoint import load_checkpoint

    known = _cached_evaluation(cache, load_checkpoint(model).content_hash, split)
    if not known.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(known, json.dumps({"dice": json.loads(dice_path.read_text()),
                                             "slides": json.loads(slides_path.read_text())}))


def plan_arms(exp: ExperimentConfig) -> list[Arm]:
    """Every arm, seed by seed (so a stopped run has whole seeds done): references, then strategies."""
    arms = []
    for seed in exp.seeds:
        arms += [Arm(kind, seed) for kind in exp.references]
        arms += [Arm("strategy", seed, strategy, method) for method in exp.methods for strategy in exp.selections]
    return arms


def picked(arm_dir: Path) -> dict[str, dict[str, float]]:
    """What an arm's external sites corrected, per round: patches, the share of them with any
    tumour, the mean tumour share of their pixels, and the sites none of whose patches had tumour.
    (The central site queues nothing, so it is left out by construction.)"""
    from ugafl.client.queue.store import CorrectionQueue

    shares: dict[int, list[float]] = {}
    empty: dict[int, int] = {}
    sites: dict[int, int] = {}
    for ws in sorted((arm_dir / "sites").glob("*/ws")):
        with CorrectionQueue(ws) as queue:
            by_round: dict[int, list[float]] = {}
            for item in queue.list("corrected"):
                by_round.setdefault(item.round, []).append(float(queue.load_correction(item.id).mean()))
        for round_, values in by_round.items():
            shares.setdefault(round_, []).extend(values)
            sites[round_] = sites.get(round_, 0) + 1
            empty[round_] = empty.get(round_, 0) + int(not any(values))
    return {str(r): {"patches": len(v), "with_tumour": float(np.mean(np.asarray(v) > 0)),
                     "tumour_share": float(np.mean(v)), "sites": sites[r], "sites_without_tumour": empty[r]}
            for r, v in sorted(shares.items())}


def group_of(result: dict) -> str:
    """An arm result's group (its arm over every seed): the reference's name, or method / selection."""
    kind = result.get("kind", "strategy")
    return f"{result['method']} / {result['selection']}" if kind == "strategy" else kind


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise(results: list[dict], baseline: dict[str, float], exp: ExperimentConfig, central_centre: str) -> dict:
    """Mean and sd over seeds of Dice per centre and of the external centres' mean, per (method, strategy)."""
    centres = list(baseline)
    external = [c for c in centres if c != central_centre]
    groups: dict[str, dict] = {}
    for r in results:
        key = group_of(r)
        g = groups.setdefault(key, {"method": r["method"], "selection": r["selection"], "runs": []})
        g["runs"].append(r)
    summary = {"baseline": {**baseline, "external": float(np.mean([baseline[c] for c in external]))},
               "external": external, "groups": {}}
    for key, g in groups.items():
        entry: dict = {"method": g["method"], "selection": g["selection"], "seeds": len(g["runs"])}
        stages = [str(p) for p in exp.patches] + (["pooled"] if all("pooled" in r for r in g["runs"]) else [])
        for stage in stages:
            per = [r["dice"][stage] if stage != "pooled" else r["pooled"] for r in g["runs"]]
            entry[stage] = {c: _mean_sd([d[c] for d in per]) for c in centres}
            entry[stage]["external"] = _mean_sd([float(np.mean([d[c] for c in external])) for d in per])
        if all("picked" in r for r in g["runs"]):
            rounds = sorted({k for r in g["runs"] for k in r["picked"]}, key=int)
            entry["picked"] = {k: {"with_tumour": float(np.mean([r["picked"][k]["with_tumour"] for r in g["runs"]])),
                                   "sites_without_tumour": sum(r["picked"][k]["sites_without_tumour"] for r in g["runs"]),
                                   "sites": sum(r["picked"][k]["sites"] for r in g["runs"])}
                               for k in rounds if all(k in r["picked"] for r in g["runs"])}
        summary["groups"][key] = entry
    return summary


def table_markdown(summary: dict, exp: ExperimentConfig) -> str:
    """Dice per centre and the external mean: baseline, +N patches (mean ± sd over seeds), pooled
    reference; the paper's figures beside the external mean."""
    external = summary["external"]
    centres = [c for c in summary["baseline"] if c != "external"]
    head = ["method / selection", "stage", *centres, "external mean", "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = summary["baseline"]
    lines.append("| central model | baseline | " + " | ".join(f"{base[c]:.3f}" for c in centres) +
                 f" | **{base['external']:.3f}** | {PAPER['baseline']:.2f} |")
    for key, g in summary["groups"].items():
        for stage in [str(p) for p in exp.patches] + (["pooled"] if "pooled" in g else []):
            label = f"+{stage} patches" if stage != "pooled" else f"pooled, +{max(exp.patches)} (not federated)"
            cells = [f"{g[stage][c][0]:.3f} ± {g[stage][c][1]:.3f}" for c in centres]
            paper = PAPER.get(int(stage)) if stage.isdigit() else None
            lines.append(f"| {key} | {label} | " + " | ".join(cells) +
                         f" | **{g[stage]['external'][0]:.3f} ± {g[stage]['external'][1]:.3f}** | "
                         f"{'' if paper is None else f'{paper:.2f}'} |")
    lines.append("")
    lines.append(f"External centres: {', '.join(external)}. Mean ± sd over {max(g['seeds'] for g in summary['groups'].values())} "
                 "seed(s). The paper's figures are its external-centre Dice (0.66 baseline, 0.76 at 5, 0.84 at 10).")
    if all("picked" in g for g in summary["groups"].values()):
        lines += ["", "What the external sites were given to correct, per round (all seeds): the share of patches with "
                  "any tumour, and the sites none of whose patches had tumour.", "",
                  "| method / selection | round | patches with tumour | sites without tumour |", "|---|---|---|---|"]
        for key, g in summary["groups"].items():
            for round_, p in g["picked"].items():
                lines.append(f"| {key} | {round_} | {p['with_tumour']:.0%} | {p['sites_without_tumour']} of {p['sites']} |")
    return "\n".join(lines) + "\n"


def figures(summary: dict, exp: ExperimentConfig, out_dir: Path) -> list[Path]:
    """Dice (external mean) against corrected patches per strategy, and the same per centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0, *exp.patches]
    centres = [c for c in summary["baseline"] if c != "external"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (key, g) in enumerate(summary["groups"].items()):
        means = [summary["baseline"]["external"]] + [g[str(p)]["external"][0] for p in exp.patches]
        sds = [0.0] + [g[str(p)]["external"][1] for p in exp.patches]
        line = ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=key)
        if "pooled" in g:  # the non-federated reference, beside the last count
            ax.errorbar([xs[-1] + 0.3 * (i + 1)], [g["pooled"]["external"][0]], yerr=[g["pooled"]["external"][1]], fmt="D",
                        mfc="none", capsize=3, color=line[0].get_color())
    if any("pooled" in g for g in summary["groups"].values()):
        ax.plot([], [], "kD", mfc="none", label=f"pooled, +{xs[-1]}, not federated")
    ax.plot([0, 5, 10], [PAPER["baseline"], PAPER[5], PAPER[10]], "k--", marker="x", label="paper (external)")
    central = [c for c in centres if c not in summary["external"]]
    if central:  # the target: +10 closes half the gap between the baseline and the central centre's Dice
        base = summary["baseline"]
        ax.axhline(base["external"] + (base[central[0]] - base["external"]) / 2, color="grey", ls=":",
                   label=f"half the gap to {central[0]}'s {base[central[0]]:.2f}")
    ax.set_xlabel("corrected patches per centre")
    ax.set_ylabel("Dice, mean of the external centres")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Dice against corrected patches (mean ± sd over seeds)", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "dice_vs_patches.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(centres), figsize=(3.2 * len(centres), 3.4), sharey=True, squeeze=False)
    for ax, centre in zip(axes[0], centres):
        for key, g in summary["groups"].items():
            means = [summary["baseline"][centre]] + [g[str(p)][centre][0] for p in exp.patches]
            sds = [0.0] + [g[str(p)][centre][1] for p in exp.patches]
            ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=key)
        ax.set_title(centre, fontsize=10)
        ax.set_xticks(xs)
        ax.set_xlabel("corrected patches")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (test slides)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "per_centre.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def versions() -> dict[str, str]:
    import subprocess
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = ""
    return {"python": platform.python_version(), "ugafl_commit": commit, "machine": platform.machine(),
            **{p: version(p) for p in ("torch", "monai", "flwr", "numpy", "openslide-python")}}


def check_federation(cfg: RunConfig) -> None:
    """Refuse a bad [federation] section before minutes of data and central training, not at the first arm."""
    from ugafl.simulations.extra import require_flower_simulation
    from ugafl.simulations.federated import federation_settings

    federation_settings(cfg)
    require_flower_simulation()


ARM_FIELDS = ("budget", "patches", "central_trains", "eval_split", "pooled_reference")  # what an arm's result depends on


def setup_of(cfg: RunConfig) -> dict[str, object]:
    """What every arm's result depends on, as effective values (defaults filled in): the data, the
    model and its training, the federation's settings and the arms' schedule; not which arms run."""
    from dataclasses import asdict

    from ugafl.simulations.federated import federation_settings
    from ugafl.simulations.synth import SynthConfig

    exp = cfg.section(ExperimentConfig, "experiment")
    federation = asdict(federation_settings(cfg)[0])
    return {"data": asdict(cfg.section(SynthConfig, "data")), "model": cfg.model.to_dict(), "train": asdict(cfg.train),
            "central": asdict(cfg.central), "federation": {k: v for k, v in federation.items() if k != "run_name"},
            "experiment": {k: getattr(exp, k) for k in ARM_FIELDS}}


def check_same_setup(cfg: RunConfig, run_dir: Path) -> None:
    """ConfigError unless `run_dir` is new or its arms ran with the same setup as `cfg` (more seeds
    or strategies are fine): a changed recipe must not resume, silently, from another recipe's arms."""
    kept = run_dir / "config.toml"
    if cfg.path is None or not kept.is_file():
        return
    from ugafl.common.config import load_config

    try:
        before = setup_of(load_config(kept))
    except ConfigError as err:
        raise ConfigError(f"{run_dir}: its arms ran with a config this version cannot read ({err}); "
                          "give the run another --name") from None
    now = setup_of(cfg)
    changed = [f"[{section}] {key}: {before[section].get(key)!r} -> {value!r}"
               for section in now for key, value in now[section].items() if before[section].get(key) != value]
    if changed:
        raise ConfigError(f"{cfg.path}: {run_dir} holds arms run with another setup ({'; '.join(changed[:4])}"
                          f"{'; ...' if len(changed) > 4 else ''}); give this run another --name")


def run_experiment(cfg: RunConfig, run_dir: str | Path, report_only: bool = False) -> dict:
    """Every arm (resuming complete ones), then the table and plots; returns the summary. With
    `report_only`, no arm runs: the tables and plots are made from the arms complete so far (a
    long run can be looked at while it runs, or arms copied from elsewhere reported; the data,
    the central model and the baseline are made first if they are missing)."""
    from ugafl.server.central_training import train_central
    from ugafl.simulations.synth import SynthConfig, generate_dataset

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = cfg.section(ExperimentConfig, "experiment")
    synth = cfg.section(SynthConfig, "data")
    check_federation(cfg)
    check_same_setup(cfg, run_dir)
    if cfg.path is not None:
        (run_dir / "config.toml").write_text(cfg.path.read_text())
    if not report_only:  # the arms' own versions are in their result.json
        atomic_write_text(run_dir / "versions.json", json.dumps(versions(), indent=1))
    started = time.time()
    setup_path = run_dir / "setup_seconds.json"  # what the data, the central model and the baseline took when made
    setup = json.loads(setup_path.read_text()) if setup_path.is_file() else {}
    t0 = time.time()
    manifest = generate_dataset(run_dir / "data", synth)  # (made once: a report of copied arms needs it too)
    setup.setdefault("data", round(time.time() - t0, 1))
    central = run_dir / "central.pt"
    if not central.is_file():
        t0 = time.time()
        train_central(manifest.root, central, cfg.model, cfg.train, cfg.central)
        setup["central"] = round(time.time() - t0, 1)
    baseline_path, baseline_slides_path = run_dir / "baseline.json", run_dir / "baseline_slides.json"
    if not (baseline_path.is_file() and baseline_slides_path.is_file()):
        t0 = time.time()
        dice, rows = evaluate_test_slides(central, manifest.root, run_dir / "shared" / "evaluations", exp.eval_split)
        atomic_write_text(baseline_slides_path, json.dumps(rows, indent=1))
        atomic_write_text(baseline_path, json.dumps(dice, indent=1))
        setup["baseline"] = round(time.time() - t0, 1)
    atomic_write_text(setup_path, json.dumps(setup, indent=1))
    _remember_evaluation(central, baseline_path, baseline_slides_path, run_dir / "shared" / "evaluations", exp.eval_split)
    baseline = json.loads(baseline_path.read_text())
    results = []
    arms = plan_arms(exp)
    if report_only:
        results = [json.loads(path.read_text()) for arm in arms if (path := run_dir / "arms" / arm.name / "result.json").is_file()]
        if not results:
            raise ConfigError(f"{run_dir / 'arms'}: no complete arm yet")
        log.info("report of %d of %d arms", len(results), len(arms))
    with tqdm(arms, desc="arms", unit="arm", disable=report_only) as bar:
        for arm in bar if not report_only else []:
            bar.set_postfix_str(arm.name)
            results.append(run_arm(cfg, exp, run_dir / "arms" / arm.name, central, manifest.root, arm))
    for r in results:  # from the sites' queues, so arms run before this was recorded have it too
        r["picked"] = picked(run_dir / "arms" / r["arm"])
    summary = summarise(results, baseline, exp, cfg.central.centre)
    summary["seconds_this_invocation"] = round(time.time() - started, 1)  # arms resumed from result.json cost ~0
    summary["arm_seconds"] = {r["arm"]: r["seconds"] for r in results}
    summary["arm_seconds_total"] = round(sum(summary["arm_seconds"].values()), 1)
    atomic_write_text(run_dir / "results.json", json.dumps({"summary": summary, "arms": results}, indent=1))
    atomic_write_text(run_dir / "table.md", table_markdown(summary, exp))
    if not exp.references:  # with reference arms the report draws these plots (with the null and oracle bands)
        figures(summary, exp, run_dir)
    else:
        from ugafl.simulations.experiment_report import write_report

        write_report(results, json.loads(baseline_slides_path.read_text()), exp, cfg, run_dir,
                     minutes=(summary["arm_seconds_total"] + sum(setup.values())) / 60)
    log.info("experiment done\n%s", table_markdown(summary, exp))
    return summary

