"""The train step of a round: fine-tune the global model on the site's corrected patches (a
central site: on its own labelled bank), on the site's device. Returns the weights and scalar
metrics; a site with nothing new since its last training returns no weights.

Two recipes (common.anchored_training.LOCAL_TRAININGS): "anchored", the corrected patches mixed
with the site's own unlabelled tissue under the global model's soft labels, with a proximal term
and steps that follow the corrected area; "plain", the corrected patches alone for a fixed number
of steps (what the paper's configs ran). With the gate on, a site with at least two corrections
holds out its newest one: it is not trained on, and the train reply carries how the incoming
model does on it (pixel counts), which the evaluate step reports again for the new model."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ugafl.client.queue.corrected import corrected_patches
from ugafl.client.round.anchor_bank import AnchorBank, anchor_bank
from ugafl.client.round.records import FEDERATION_DIR
from ugafl.client.round.site_checks import central_validation_counts, pixel_counts
from ugafl.client.site_config import SiteConfig
from ugafl.common.anchored_training import AnchoredConfig, train_anchored
from ugafl.common.atomic import atomic_write_text
from ugafl.common.central_bank import round_bank
from ugafl.common.model import ModelConfig, members_of
from ugafl.common.training import TrainConfig, train_segmentation
from ugafl.common.wire import unique_state

LOCAL_BATCH = 8  # crops per local step
MEMBER_SEED_STRIDE = 1000  # an ensemble's member m trains with seed + 1000 m (member 0: the seed itself)
LOCAL_CROP_PX = 128  # largest crop side, px at the model's mpp


@dataclass(frozen=True)
class LocalRecipe:
    """How the coordinator asks a site to train this round (from the train message's config)."""

    training: str = "anchored"  # common.anchored_training.LOCAL_TRAININGS
    steps: int = 100  # plain: the steps; anchored: at most this many
    epochs: float = 2.0  # anchored: passes over the corrected area
    lr: float = 1e-3
    proximal_mu: float = 0.0
    anchor_share: float = 0.5
    anchor_crops: int = 64
    loss: str = "dice-ce"
    stain_augmentation: bool = False  # H&E stain jitter on the training crops (common.stain)
    gate: bool = False  # hold out the newest correction and report on it

    @staticmethod
    def from_message(config) -> LocalRecipe:
        """From a train message's config (keys as FederationSettings' with '-'); defaults for the
        keys an older coordinator does not send."""
        d = LocalRecipe()
        return LocalRecipe(training=str(config.get("local-training", "plain")), steps=int(config.get("local-steps", d.steps)),
                           epochs=float(config.get("local-epochs", d.epochs)), lr=float(config.get("lr", d.lr)),
                           proximal_mu=float(config.get("proximal-mu", d.proximal_mu)),
                           anchor_share=float(config.get("anchor-share", d.anchor_share)),
                           anchor_crops=int(config.get("anchor-crops", d.anchor_crops)),
                           loss=str(config.get("local-loss", d.loss)),
                           stain_augmentation=bool(config.get("stain-augmentation", False)),
                           gate=bool(config.get("gate", False)))


def trained_on(workspace: Path) -> list[int]:
    """Ids of the corrected patches the last local training used."""
    path = workspace / FEDERATION_DIR / "trained_on.json"
    return json.loads(path.read_text()) if path.is_file() else []


def held_out_path(workspace: Path) -> Path:
    """Where the site notes which correction the last training held out (the evaluate step reads it)."""
    return workspace / FEDERATION_DIR / "held_out.json"


def local_schedule(images: np.ndarray, steps: int, lr: float, seed: int, proximal_mu: float = 0.0,
                   loss: str = "dice-ce", stain_augmentation: bool = False) -> TrainConfig:
    """How a site fine-tunes on `images` (N, H, W, 3) with the plain recipe: batches of 8 crops of up to 128 px."""
    return TrainConfig(steps=steps, batch_size=LOCAL_BATCH, crop=min(LOCAL_CROP_PX, images.shape[1], images.shape[2]),
                       lr=lr, proximal_mu=proximal_mu, loss=loss, seed=seed,
                       stain_augmentation=stain_augmentation)


def _nothing(extra: dict[str, float] | None = None) -> tuple[None, list[int], dict[str, float]]:
    return None, [], {"num-examples": 0.0, "site-weight": 0.0, "new-corrections": 0.0, **(extra or {})}


def train(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, recipe: LocalRecipe, seed: int,
          round_: int | None = None) -> tuple[dict[str, torch.Tensor] | None, list[int], dict[str, float]]:
    """Fine-tune the global model on the site's corrected patches (a central site: on its own
    labelled data). (state dict, ids of the corrected patches used, metrics); the state is None
    when there is nothing new (unless the site retrains every round). With the gate, the metrics
    also carry the incoming model's pixel counts on the held-out correction (`gate-incoming-held-*`)
    or, at the central site, on its validation patches (`gate-incoming-val-*`)."""
    if site.role == "central":
        gate = central_validation_counts(site, model, cfg, "gate-incoming-val") if recipe.gate else {}
        if not site.train:
            return _nothing(gate)
        bank = round_bank(site.central_data, cfg, site.central_centre, seed)
        state, metrics = _plain(model, cfg, bank.images, bank.labels, recipe, seed)
        return state, [], {**metrics, "new-corrections": 0.0, **gate}
    images, labels, ids = corrected_patches(site.workspace)
    gate: dict[str, float] = {}
    if recipe.gate and len(ids) >= 2:
        newest = int(np.argmax(ids))
        atomic_write_text(_mkdir(held_out_path(site.workspace)), json.dumps([ids[newest]]))
        gate = pixel_counts(model, images[newest:newest + 1], labels[newest:newest + 1], "gate-incoming-held")
        keep = [k for k in range(len(ids)) if k != newest]
        images, labels, ids = images[keep], labels[keep], [ids[k] for k in keep]
    else:
        held_out_path(site.workspace).unlink(missing_ok=True)
    done_before = trained_on(site.workspace)
    if not site.train or not ids or (sorted(ids) == done_before and not site.retrain):
        return _nothing(gate)
    new = len(set(ids) - set(done_before))
    if recipe.training == "anchored":
        state, metrics = _anchored(site, model, cfg, images, labels, recipe, seed, round_)
    else:
        state, metrics = _plain(model, cfg, images, labels, recipe, seed)
    atomic_write_text(_mkdir(site.workspace / FEDERATION_DIR / "trained_on.json"), json.dumps(sorted(ids)))
    return state, ids, {**metrics, "new-corrections": float(new), **gate}


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def plain_training(model: torch.nn.Module, cfg: ModelConfig, images: np.ndarray, labels: np.ndarray,
                   recipe: LocalRecipe, seed: int) -> list[float]:
    """The plain recipe: `recipe.steps` steps on `images`/`labels` alone (each member of an
    ensemble in turn, member m with seed + MEMBER_SEED_STRIDE * m); the losses."""
    device = next(model.parameters()).device
    losses: list[float] = []
    for m, member in enumerate(members_of(model)):
        reference = {k: v.detach().clone() for k, v in member.named_parameters()}
        schedule = local_schedule(images, recipe.steps, recipe.lr, seed + MEMBER_SEED_STRIDE * m, recipe.proximal_mu,
                                  recipe.loss, recipe.stain_augmentation)
        losses += train_segmentation(member, images, labels, schedule, device, progress=False, reference=reference,
                                     num_classes=cfg.num_classes)
    model.eval()
    return losses


def _plain(model: torch.nn.Module, cfg: ModelConfig, images: np.ndarray, labels: np.ndarray, recipe: LocalRecipe,
           seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    started = time.perf_counter()
    losses = plain_training(model, cfg, images, labels, recipe, seed)
    return unique_state(model), {"num-examples": float(len(images)), "site-weight": 1.0,
                                 "steps": float(len(losses) / len(members_of(model))),
                                 "loss": float(np.mean(losses[-10:])), "seconds": time.perf_counter() - started}


def anchored_training(workspace: Path, slides: Path, model: torch.nn.Module, cfg: ModelConfig, images: np.ndarray,
                      labels: np.ndarray, recipe: LocalRecipe, seed: int, round_: int | None = None) -> tuple[list[float], int]:
    """The anchored recipe on the corrected `images`/`labels`, the anchors drawn from the site's
    workspace and slides (as of round `round_`, see anchor_bank); (losses, anchor crops)."""
    device = next(model.parameters()).device
    schedule = AnchoredConfig(epochs=recipe.epochs, max_steps=recipe.steps, batch_size=LOCAL_BATCH,
                              crop=min(LOCAL_CROP_PX, images.shape[1], images.shape[2]), anchor_share=recipe.anchor_share,
                              lr=recipe.lr, proximal_mu=recipe.proximal_mu, loss=recipe.loss, seed=seed,
                              stain_augmentation=recipe.stain_augmentation)
    anchors = (anchor_bank(workspace, slides, model, cfg, recipe.anchor_crops, schedule.crop, seed, round_)
               if recipe.anchor_share > 0 else AnchorBank.empty(schedule.crop))
    if not len(anchors.images):
        schedule = replace(schedule, anchor_share=0.0)
    losses: list[float] = []
    for m, member in enumerate(members_of(model)):  # an ensemble: every member on the same anchors
        reference = {k: v.detach().clone() for k, v in member.named_parameters()}
        losses += train_anchored(member, images, labels, anchors.images, anchors.probs,
                                 replace(schedule, seed=seed + MEMBER_SEED_STRIDE * m), cfg.mpp, device,
                                 reference=reference, num_classes=cfg.num_classes)
    model.eval()
    return losses, len(anchors.images)


def _anchored(site: SiteConfig, model: torch.nn.Module, cfg: ModelConfig, images: np.ndarray, labels: np.ndarray,
              recipe: LocalRecipe, seed: int, round_: int | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    started = time.perf_counter()
    losses, anchors = anchored_training(site.workspace, site.slides, model, cfg, images, labels, recipe, seed, round_)
    return unique_state(model), {"num-examples": float(len(images)), "site-weight": 1.0,
                                 "steps": float(len(losses) / len(members_of(model))), "anchors": float(anchors),
                                 "loss": float(np.mean(losses[-10:])),
                                 "seconds": time.perf_counter() - started}
