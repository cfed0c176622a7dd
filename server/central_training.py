"""Central training at the coordinator's hospital (RUMC): a patch bank from its training slides,
the shared training loop, and a checkpoint that records what it was trained on."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.log import get_logger
from ugafl.common.manifest import load_manifest
from ugafl.common.model import MemberStack, ModelConfig, build_model, pick_device
from ugafl.common.central_bank import CentralConfig, build_bank
from ugafl.common.training import TrainConfig, train_segmentation

log = get_logger("central")


def member_paths(out: str | Path, members: int) -> list[Path]:
    """Checkpoint paths of an ensemble's members: OUT itself for one, OUT-m0, OUT-m1, ... for more
    (OUT then holds all of them as one model, see `train_central`)."""
    out = Path(out)
    return [out] if members == 1 else [out.with_name(f"{out.stem}-m{m}{out.suffix}") for m in range(members)]


def train_central(data_dir: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  central: CentralConfig = CentralConfig(), device: str = "auto", progress: bool = True) -> list[Path]:
    """Trains the central model (or `central.members` ensemble members, nnU-Net style: member m
    leaves out fold m of the patch bank and uses seed + m) on `central.centre`'s training slides.
    With several members, OUT itself holds them all as one model (common.model.MemberStack), which
    a federation can carry as its global model. Returns the checkpoint paths written."""
    started = time.time()
    dev = pick_device(device)
    bank, slide_ids = build_bank(data_dir, model_cfg, central, train_cfg.seed, progress)
    log.info("patch bank: %d patches of %d px at %.2f µm/px, tumour pixels %.1f%%", len(bank.labels),
             central.bank_patch_size, model_cfg.mpp, 100 * bank.labels.mean())
    folds = np.random.default_rng(train_cfg.seed).permutation(len(bank.labels)) % max(central.members, 1)
    digest = load_manifest(data_dir).info.get("digest")
    written, trained = [], []
    for m, path in enumerate(member_paths(out, central.members)):
        keep = folds != m if central.members > 1 else np.ones(len(folds), bool)
        cfg_m = replace(train_cfg, seed=train_cfg.seed + m)
        torch.manual_seed(cfg_m.seed)
        model = build_model(model_cfg)
        losses = train_segmentation(model, bank.images[keep], bank.labels[keep], cfg_m, dev, progress,
                                    raters=bank.raters[keep] if bank.raters is not None else None,
                                    num_classes=model_cfg.num_classes)
        summary = {"centre": central.centre, "slides": slide_ids, "patches": int(keep.sum()),
                   "tumour_pixel_fraction": round(float(bank.labels[keep].mean()), 4), "mpp": model_cfg.mpp,
                   "manifest_digest": digest, "final_loss": round(float(np.mean(losses[-50:])), 4),
                   "device": dev.type, "seconds": round(time.time() - started, 1)}
        extra = {"ensemble": {"member": m, "of": central.members}} if central.members > 1 else {}
        save_checkpoint(path, model, model_cfg, train_config={**cfg_m.to_dict(), **{f"central_{k}": v for k, v in asdict(central).items()}},
                        data_summary=summary, extra=extra)
        log.info("wrote %s (%.0f s)", path, time.time() - started)
        written.append(path)
        trained.append(model)
    if central.members > 1:
        stack_cfg = replace(model_cfg, members=central.members)
        stack = MemberStack(trained, model_cfg.num_classes)
        save_checkpoint(out, stack, stack_cfg, train_config={**train_cfg.to_dict(), **{f"central_{k}": v for k, v in asdict(central).items()}},
                        data_summary={"centre": central.centre, "slides": slide_ids, "members": [p.name for p in written]},
                        extra={"ensemble": {"members": central.members}})
        log.info("wrote %s: the %d members as one model", out, central.members)
        written.append(Path(out))
    return written
