"""The central hospital's labelled patch bank (RUMC): what the central model is trained on, and what
the central site fine-tunes on in every federated round. Both sides need it, so it lives here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from ugafl.common.errors import DataError
from ugafl.common.manifest import load_manifest
from ugafl.common.model import ModelConfig
from ugafl.common.patch_bank import PatchBank, sample_patches

ROUND_PATCHES_PER_SLIDE = 60  # the central site's bank in one federated round, per training slide


@dataclass(frozen=True)
class CentralConfig:
    """Which data the central model learns from."""

    centre: Annotated[str, Field(min_length=1)] = "RUMC"
    patches_per_slide: Annotated[int, Field(ge=1)] = 240
    bank_patch_size: Annotated[int, Field(ge=1)] = 192  # px at the model's mpp; training crops are cut from these
    tumour_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5  # share of the bank's patches centred on tumour
    members: Annotated[int, Field(ge=1)] = 1  # >1: an ensemble, member m trained with seed+m without fold m of the patch bank


def build_bank(data_dir: str | Path, model_cfg: ModelConfig, central: CentralConfig, seed: int, progress: bool = True) -> tuple[PatchBank, list[str]]:
    """The patch bank from `central.centre`'s training slides, and those slides' ids."""
    manifest = load_manifest(data_dir)
    slides = manifest.select(centre=central.centre, split="train")
    if not slides:
        raise DataError(f"{manifest.root}: no training slides of centre {central.centre!r}; centres here: {', '.join(manifest.centres)}")
    rng = np.random.default_rng(seed)
    banks = []
    for rec in tqdm(slides, desc="patch bank", unit="slide", disable=not progress):
        raters = [manifest.path_of(r) for r in rec.rater_masks] if model_cfg.disagreement_head else []
        if model_cfg.disagreement_head and not raters:
            raise DataError(f"{manifest.root}: slide {rec.slide_id} has no raters' masks; EDUE's disagreement head needs them")
        banks.append(sample_patches(manifest.path_of(rec.path), manifest.path_of(rec.mask), rec.slide_id, model_cfg.mpp,
                                    central.bank_patch_size, central.patches_per_slide, central.tumour_fraction, rng,
                                    rater_paths=raters))
    return PatchBank.concat(banks), [s.slide_id for s in slides]


def round_bank(data_dir: Path, cfg: ModelConfig, centre: str, seed: int) -> PatchBank:
    """The central site's labelled patches for one federated round: 60 per training slide of `centre`."""
    return build_bank(data_dir, cfg, CentralConfig(centre=centre, patches_per_slide=ROUND_PATCHES_PER_SLIDE), seed,
                      progress=False)[0]
