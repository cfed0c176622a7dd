"""Central training at the coordinator's hospital (RUMC): a patch bank from its training slides,
the shared training loop, and a checkpoint that records what it was trained on."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.errors import DataError
from ugafl.common.log import get_logger
from ugafl.common.manifest import load_manifest
from ugafl.common.model import ModelConfig, build_model, pick_device
from ugafl.common.patch_bank import PatchBank, sample_patches
from ugafl.common.training import TrainConfig, train_segmentation

log = get_logger("central")


@dataclass(frozen=True)
class CentralConfig:
    """Which data the central model learns from."""

    centre: str = "RUMC"
    patches_per_slide: int = 240
    bank_patch_size: int = 192  # px at the model's mpp; training crops are cut from these
    tumour_fraction: float = 0.5


def build_bank(data_dir: str | Path, model_cfg: ModelConfig, central: CentralConfig, seed: int, progress: bool = True) -> tuple[PatchBank, list[str]]:
    """The patch bank from `central.centre`'s training slides, and those slides' ids."""
    manifest = load_manifest(data_dir)
    slides = manifest.select(centre=central.centre, split="train")
    if not slides:
        raise DataError(f"{manifest.root}: no training slides of centre {central.centre!r}; centres here: {', '.join(manifest.centres)}")
    rng = np.random.default_rng(seed)
    banks = []
    for rec in tqdm(slides, desc="patch bank", unit="slide", disable=not progress):
        banks.append(sample_patches(manifest.path_of(rec.path), manifest.path_of(rec.mask), rec.slide_id, model_cfg.mpp,
                                    central.bank_patch_size, central.patches_per_slide, central.tumour_fraction, rng))
    return PatchBank.concat(banks), [s.slide_id for s in slides]


def train_central(data_dir: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  central: CentralConfig = CentralConfig(), device: str = "auto", progress: bool = True) -> Path:
    """Trains the central model on `central.centre`'s training slides and writes its checkpoint."""
    started = time.time()
    dev = pick_device(device)
    torch.manual_seed(train_cfg.seed)
    bank, slide_ids = build_bank(data_dir, model_cfg, central, train_cfg.seed, progress)
    log.info("patch bank: %d patches of %d px at %.2f µm/px, tumour pixels %.1f%%", len(bank.labels),
             central.bank_patch_size, model_cfg.mpp, 100 * bank.labels.mean())
    model = build_model(model_cfg)
    losses = train_segmentation(model, bank.images, bank.labels, train_cfg, dev, progress)
    summary = {"centre": central.centre, "slides": slide_ids, "patches": int(len(bank.labels)),
               "tumour_pixel_fraction": round(float(bank.labels.mean()), 4), "mpp": model_cfg.mpp,
               "manifest_digest": load_manifest(data_dir).info.get("digest"), "final_loss": round(float(np.mean(losses[-50:])), 4),
               "device": dev.type, "seconds": round(time.time() - started, 1)}
    path = Path(out)
    save_checkpoint(path, model, model_cfg, train_config={**train_cfg.to_dict(), **{f"central_{k}": v for k, v in asdict(central).items()}},
                    data_summary=summary)
    log.info("wrote %s (%.0f s)", path, time.time() - started)
    return path
