"""Synthetic Camelyon: generates a multi-centre dataset of pyramidal slides, exact tumour masks
and simulated raters' masks, with a manifest. Deterministic for a seed: each slide draws from its
own seed sequence (seed, centre, index), whatever the order in which workers finish."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from tqdm.auto import tqdm

from ugafl.common.atomic import atomic_write_text
from ugafl.common.config import one_of
from ugafl.common.log import get_logger
from ugafl.common.manifest import Manifest, SlideRecord, TumourRegion
from ugafl.simulations.centres import CENTRES, WORLDS, get_centre
from ugafl.simulations.extra import require_jpeg_writer
from ugafl.simulations.raters import rater_masks
from ugafl.simulations.render import render_section
from ugafl.simulations.scanner import scan
from ugafl.common.masks import write_mask
from ugafl.simulations.slide_writer import write_slide
from ugafl.simulations.tumour import size_class

log = get_logger("synth")
GENERATOR_VERSION = "1"
LABEL_CYCLE = ("macro", "micro", "negative", "itc")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Resolutions in µm/px."""

    slides_per_centre: int = 6
    seed: int = 0
    centres: tuple[str, ...] = tuple(CENTRES)
    scan_mpp: float = 0.5  # level 0 of the written slides
    render_mpp: float = 1.0  # resolution at which tissue is drawn; masks are stored at this mpp
    n_raters: int = 3
    test_fraction: float = 1 / 3
    file_format: str = "by-centre"  # or "svs" / "tiff" for every slide
    world: Annotated[str, one_of(tuple(WORLDS))] = "demo"  # which centre profiles (simulations.centres.WORLDS)

    def digest(self) -> str:
        """Short hash of the settings, so a re-run reuses only slides made with the same ones."""
        settings = asdict(self)
        if settings["world"] == "demo":  # the key came later: the demo's slides keep their digest
            del settings["world"]
        text = json.dumps({**settings, "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SlideSpec:
    centre: str
    index: int
    split: str
    label_type: str


def plan_slides(cfg: SynthConfig) -> list[SlideSpec]:
    """Per centre: the first slides are training slides, the last ~test_fraction are test slides;
    label types cycle macro, micro, negative, itc within each split, so every split with two or
    more slides holds a macro- and a micro-metastasis."""
    specs = []
    n = cfg.slides_per_centre
    n_test = 0 if n < 2 else max(1, round(n * cfg.test_fraction))
    for centre in cfg.centres:
        get_centre(centre, cfg.world)
        for i in range(n):
            split = "train" if i < n - n_test else "test"
            k = i if split == "train" else i - (n - n_test)
            specs.append(SlideSpec(centre, i, split, LABEL_CYCLE[k % len(LABEL_CYCLE)]))
    return specs


def slide_digest(cfg: SynthConfig, centre: str) -> str:
    """Settings and the centre's profile: a cached slide is reused only if both are unchanged."""
    text = cfg.digest() + json.dumps(asdict(get_centre(centre, cfg.world)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _slide_seed(cfg: SynthConfig, spec: SlideSpec) -> np.random.SeedSequence:
    centre_no = int.from_bytes(hashlib.sha256(spec.centre.encode()).digest()[:4], "little")
    return np.random.SeedSequence([cfg.seed, centre_no, spec.index])


def generate_slide(out: Path, cfg: SynthConfig, spec: SlideSpec) -> SlideRecord:
    """Renders, scans and writes one slide with its masks; returns its manifest record."""
    centre = get_centre(spec.centre, cfg.world)
    slide_id = f"{spec.centre}_{spec.index:03d}"
    record_path = out / "records" / f"{slide_id}.json"
    if record_path.is_file():
        saved = json.loads(record_path.read_text())
        rec = saved["record"]
        files = [rec["path"], rec["mask"], *rec["rater_masks"]]
        if saved.get("digest") == slide_digest(cfg, spec.centre) and all((out / f).is_file() for f in files):
            return SlideRecord(**{**rec, "rater_masks": tuple(rec["rater_masks"]),
                                  "tumour_regions": tuple(TumourRegion(**r) for r in rec["tumour_regions"])})
    require_jpeg_writer()  # before seconds of rendering, not after
    seed_seq = _slide_seed(cfg, spec)
    rng = np.random.default_rng(seed_seq)
    section = render_section(rng, centre, spec.label_type, cfg.render_mpp)
    regions = section.tumour.regions
    measured = size_class(regions[0].greatest_dimension_um) if regions else "negative"
    if measured != spec.label_type:
        log.warning("%s: planned %s but drew %s; recording what was drawn", slide_id, spec.label_type, measured)
    level0 = scan(rng, section.rgb, centre, cfg.render_mpp, cfg.scan_mpp)
    fmt = centre.file_format if cfg.file_format == "by-centre" else cfg.file_format
    rel_slide = Path("slides") / spec.centre / f"{slide_id}.{fmt}"
    rel_mask = Path("masks") / spec.centre / f"{slide_id}_tumour.tif"
    for rel in (rel_slide, rel_mask):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    n_levels = write_slide(out / rel_slide, level0, cfg.scan_mpp, fmt, centre.jpeg_quality)
    write_mask(out / rel_mask, section.tumour.mask, cfg.render_mpp)
    rel_raters = []
    for k, mask in enumerate(rater_masks(rng, section.tumour.mask, cfg.n_raters, cfg.render_mpp), start=1):
        rel = Path("masks") / spec.centre / f"{slide_id}_rater{k}.tif"
        write_mask(out / rel, mask, cfg.render_mpp)
        rel_raters.append(str(rel))
    record = SlideRecord(
        slide_id=slide_id, centre=spec.centre, split=spec.split, label_type=measured, path=str(rel_slide), format=fmt,
        mpp=cfg.scan_mpp, width=int(level0.shape[1]), height=int(level0.shape[0]), levels=n_levels, mask=str(rel_mask),
        mask_mpp=cfg.render_mpp, rater_masks=tuple(rel_raters), tumour_regions=tuple(regions),
        seed=int(seed_seq.generate_state(1)[0]),
    )
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, json.dumps({"digest": slide_digest(cfg, spec.centre), "record": asdict(record)}))
    return record


def _work(args: tuple[Path, SynthConfig, SlideSpec]) -> SlideRecord:
    return generate_slide(*args)


def generate_dataset(out: str | Path, cfg: SynthConfig, workers: int | None = None, progress: bool = True) -> Manifest:
    """Generates (or completes) the dataset under `out` and writes its manifest. Slides already
    made with the same settings are kept, so an interrupted run resumes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = plan_slides(cfg)
    workers = workers or min(len(specs), os.cpu_count() or 1)
    jobs = [(out, cfg, spec) for spec in specs]
    bar = tqdm(total=len(jobs), desc="synth slides", unit="slide", disable=not progress)
    records: list[SlideRecord] = []
    if workers <= 1:
        for job in jobs:
            records.append(_work(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rec in pool.map(_work, jobs):
                records.append(rec)
                bar.update()
    bar.close()
    info = {"generator": "ugafl.simulations.synth", "generator_version": GENERATOR_VERSION, "digest": cfg.digest(),
            "config": asdict(cfg), "centres": {name: asdict(get_centre(name, cfg.world)) for name in cfg.centres}}
    manifest = Manifest(root=out, slides=records, info=info)
    manifest.save()
    log.info("wrote %d slides to %s", len(records), out)
    return manifest
