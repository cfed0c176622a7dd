"""One hospital's side of a federated round, as plain functions over the site workspace (the
Flower ClientApp is thin glue over these): check the global model's signature, query (score the
slides, queue the next patches), fine-tune on corrected patches, evaluate on them.

Every function returns only what may leave the site: model arrays and scalar metrics. Paths,
slide names and pixels stay in the workspace. All state is on disk (a fresh process runs each
message): WS/queue.db, WS/patch_scores/, and WS/federation/ (what was trained on, and a record
of every reply sent, see `record_reply`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ugafl.client.queue_fill import fill_queue
from ugafl.client.queue_store import CorrectionQueue
from ugafl.client.simulated_annotator import annotate
from ugafl.client.site_record import FEDERATION_DIR, append_jsonl
from ugafl.client.uncertainty_job import run_uncertainty
from ugafl.common.config import read_toml
from ugafl.common.errors import ConfigError
from ugafl.common.log import get_logger
from ugafl.common.metrics import confusion
from ugafl.common.model import ModelConfig, build_model, pick_device
from ugafl.common.signing import load_public_key, verify_model
from ugafl.common.training import TrainConfig, train_segmentation
from ugafl.common.uncertainty_methods import method_from_models
from ugafl.common.wire import load_unique_state, unique_state

log = get_logger("site")

ROLES = ("site", "central")


@dataclass(frozen=True)
class SiteConfig:
    """A site's settings (a TOML file named by the SuperNode's --node-config site-config=PATH).
    Relative paths are relative to the file's folder."""

    workspace: Path
    slides: Path  # the inbox of unlabelled slides (read only)
    trusted_keys: tuple[Path, ...]  # public keys of coordinators whose models this site runs
    role: str = "site"  # "central": trains on its own labelled data every round (RUMC)
    central_data: Path | None = None  # role central: dataset folder with manifest.json
    central_centre: str = "RUMC"
    annotator: str = "person"  # "simulated": corrections come from the dataset's truth (simulations)
    annotator_data: Path | None = None
    train: bool = True  # takes part in training
    device: str = "auto"
    name: str = ""  # the hospital's name, for its own logs and status
    approved_apps: tuple[str, ...] = ()  # SHA-256 of the Flower app bundles (FABs) this site runs (see app_gate)
    extra: dict = field(default_factory=dict)

    @staticmethod
    def load(path: str | Path) -> SiteConfig:
        path = Path(path)
        raw = read_toml(path, "site config")
        site = raw.get("site", raw)
        base = path.parent

        def need_path(key: str, optional: bool = False) -> Path | None:
            value = site.get(key)
            if value is None:
                if optional:
                    return None
                raise ConfigError(f"{path}: [site] {key} is missing")
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: [site] {key} must be a path, got {value!r}")
            return (base / value).resolve()

        keys = site.get("trusted_keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"{path}: [site] trusted_keys must list at least one public key file")
        role = site.get("role", "site")
        if role not in ROLES:
            raise ConfigError(f"{path}: [site] role must be one of {', '.join(ROLES)}, got {role!r}")
        annotator = site.get("annotator", "person")
        if annotator not in ("person", "simulated"):
            raise ConfigError(f"{path}: [site] annotator must be 'person' or 'simulated', got {annotator!r}")
        apps = site.get("approved_apps", [])
        if not isinstance(apps, list) or not all(isinstance(a, str) and re.fullmatch(r"[0-9a-f]{64}", a) for a in apps):
            raise ConfigError(f"{path}: [site] approved_apps must list SHA-256 hex digests of app bundles "
                              "(`ugafl server app-hash` prints the coordinator's)")
        cfg = SiteConfig(workspace=need_path("workspace"), slides=need_path("slides"),
                         trusted_keys=tuple((base / k).resolve() for k in keys), role=role,
                         central_data=need_path("central_data", optional=True),
                         central_centre=str(site.get("central_centre", "RUMC")), annotator=annotator,
                         annotator_data=need_path("annotator_data", optional=True), train=bool(site.get("train", True)),
                         device=str(site.get("device", "auto")), name=str(site.get("name", "")),
                         approved_apps=tuple(apps))
        if role == "central" and cfg.central_data is None:
            raise ConfigError(f"{path}: [site] role 'central' needs central_data (a dataset folder)")
        if annotator == "simulated" and cfg.annotator_data is None:
            raise ConfigError(f"{path}: [site] annotator 'simulated' needs annotator_data (a dataset folder)")
        return cfg


# ---------------------------------------------------------------------- the global model

def global_model(site: SiteConfig, arrays: Mapping[str, np.ndarray], model_config: Mapping[str, Any], signature: Any,
                 what: str) -> tuple[torch.nn.Module, ModelConfig, dict]:
    """The model the coordinator sent, after checking that a trusted key signed exactly these
    weights and this architecture; (model on the site's device, its config, the signed statement)."""
    statement = verify_model(arrays, signature, [load_public_key(k) for k in site.trusted_keys], what)
    if statement.get("model_config") != dict(model_config):
        raise ConfigError(f"{what}: the architecture sent differs from the one the coordinator signed")
    cfg = ModelConfig.from_dict(dict(model_config))
    model = build_model(cfg)
    load_unique_state(model, arrays, what)
    return model.to(pick_device(site.device)).eval(), cfg, statement


# ---------------------------------------------------------------------- query

def uncertainty_dir(workspace: Path, model_version: str, method: str, passes: int) -> Path:
    """Where a model version's uncertainty outputs live, per slide (shared with the inbox watcher,
    which precomputes them for new slides between rounds)."""
    return workspace / "uncertainty" / f"{model_version}.{method}x{passes}"


def query(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, model_version: str, round_: int,
          strategy: str, budget: int, seed: int, method: str = "tta", passes: int = 4) -> dict[str, float]:
    """Score every slide in the inbox with the global model, queue the next `budget` patches, and
    (simulated annotator) correct them. Returns counts and score summaries only."""
    device = next(model.parameters()).device
    method_obj = method_from_models(method, [model], cfg, device, passes)
    scores_dir = site.workspace / "patch_scores"
    for stale in scores_dir.glob(f"*.{method}.csv"):  # scores of the previous model
        stale.unlink()
    results = run_uncertainty(site.slides, method_obj, uncertainty_dir(site.workspace, model_version, method, passes),
                              workspace=site.workspace, device=device, progress=False, reuse=True)
    ids = fill_queue(site.workspace, site.slides, method_obj, method, strategy, budget, seed + round_, model_version,
                     round_, device=device) if any(r.error is None and r.patches for r in results) else []
    with CorrectionQueue(site.workspace) as queue:
        chosen = [queue.get(i).score for i in ids]
    corrected_now = 0
    if site.annotator == "simulated" and ids:
        corrected_now = annotate(site.workspace, site.annotator_data, who="simulated-annotator", seed=seed + round_)
    with CorrectionQueue(site.workspace) as queue:
        counts = queue.counts()
    return {"slides-scored": float(sum(r.error is None for r in results)),
            "slides-failed": float(sum(r.error is not None for r in results)),
            "patches-scored": float(sum(r.patches for r in results)),
            "queued": float(len(ids)), "corrected-now": float(corrected_now),
            "score-mean": float(np.mean(chosen)) if chosen else 0.0,
            "score-max": float(np.max(chosen)) if chosen else 0.0,
            **{f"queue-{state.replace('_', '-')}": float(n) for state, n in counts.items()}}


# ---------------------------------------------------------------------- train

def corrected_patches(workspace: Path, round_: int | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Images (N, H, W, 3) and corrected masks (N, H, W) of every corrected item (of one query
    round, if given), with the ids."""
    with CorrectionQueue(workspace) as queue:
        items = [i for i in queue.list("corrected") if round_ is None or i.round == round_]
        if not items:
            return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0), np.uint8), []
        images = [queue.load_image(i.id) for i in items]
        masks = [queue.load_correction(i.id).astype(np.uint8) for i in items]
    shape = images[0].shape[:2]
    keep = [k for k, im in enumerate(images) if im.shape[:2] == shape]
    return (np.stack([images[k] for k in keep]), np.stack([masks[k] for k in keep]), [items[k].id for k in keep])


def trained_on(workspace: Path) -> list[int]:
    """Ids of the corrected patches the last local training used."""
    path = workspace / FEDERATION_DIR / "trained_on.json"
    return json.loads(path.read_text()) if path.is_file() else []


def central_bank(data_dir: Path, cfg: ModelConfig, centre: str, seed: int):
    """The central site's labelled patches for one round: 60 per training slide of `centre`."""
    from ugafl.server.central_training import CentralConfig, build_bank

    return build_bank(data_dir, cfg, CentralConfig(centre=centre, patches_per_slide=60), seed, progress=False)[0]


def local_schedule(images: np.ndarray, steps: int, lr: float, seed: int, proximal_mu: float = 0.0) -> TrainConfig:
    """How a site fine-tunes on `images` (N, H, W, 3): batches of 8 crops of up to 128 px."""
    return TrainConfig(steps=steps, batch_size=8, crop=min(128, images.shape[1], images.shape[2]), lr=lr,
                       proximal_mu=proximal_mu, seed=seed)


def train(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, steps: int, proximal_mu: float, lr: float,
          seed: int) -> tuple[dict[str, torch.Tensor] | None, int, dict[str, float]]:
    """Fine-tune the global model on the site's corrected patches (a central site: on its own
    labelled data too). (state dict, examples, metrics); (None, 0, ...) when there is nothing new."""
    from ugafl.common.atomic import atomic_write_text

    if site.role == "central":
        bank = central_bank(site.central_data, cfg, site.central_centre, seed)
        images, labels, ids = bank.images, bank.labels, []
    else:
        images, labels, ids = corrected_patches(site.workspace)
    done_before = trained_on(site.workspace)
    if site.role != "central" and (not site.train or not ids or sorted(ids) == done_before):
        return None, 0, {"num-examples": 0.0, "site-weight": 0.0, "new-corrections": 0.0}
    new = len(set(ids) - set(done_before))
    device = next(model.parameters()).device
    reference = {k: v.detach().clone() for k, v in model.named_parameters()}
    started = time.perf_counter()
    losses = train_segmentation(model, images, labels, local_schedule(images, steps, lr, seed, proximal_mu),
                                device, progress=False, reference=reference, num_classes=cfg.num_classes)
    if ids:
        (site.workspace / FEDERATION_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_text(site.workspace / FEDERATION_DIR / "trained_on.json", json.dumps(sorted(ids)))
    state = unique_state(model)
    return state, len(images), {"num-examples": float(len(images)), "site-weight": 1.0, "new-corrections": float(new),
                                "loss": float(np.mean(losses[-10:])), "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------- evaluate

@torch.no_grad()
def evaluate(site: SiteConfig, model: torch.nn.Module) -> dict[str, float]:
    """Pooled Dice of the model on the site's corrected patches (its labelled data)."""
    images, labels, _ = corrected_patches(site.workspace)
    if not len(images):
        return {"num-examples": 0.0, "site-weight": 0.0}
    device = next(model.parameters()).device
    tp = fp = fn = 0
    for start in range(0, len(images), 8):
        x = torch.from_numpy(images[start:start + 8]).permute(0, 3, 1, 2).float().div(255).to(device)
        pred = model(x)[:, :2].argmax(1).cpu().numpy().astype(bool)
        c = confusion(pred, labels[start:start + 8].astype(bool))
        tp, fp, fn = tp + c.tp, fp + c.fp, fn + c.fn
    dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return {"num-examples": float(len(images)), "site-weight": 1.0, "dice": float(dice)}


# ---------------------------------------------------------------------- what went out

def record_reply(workspace: Path, message_type: str, round_: int, records: Mapping[str, Any]) -> None:
    """Append what this site sent in one reply (each record described: array names, dtypes,
    shapes and digest; metric values) to WS/federation/outbox.jsonl, the site's own record of
    everything that left it."""
    append_jsonl(workspace / FEDERATION_DIR / "outbox.jsonl",
                 {"type": message_type, "round": round_, "records": dict(records)})
