"""The site's inbox watcher (a child of the site daemon): registers new slides as they land in the
inbox and precomputes their uncertainty with the site's current global model, so the next round's
query only reads the results.

A slide counts once its files' sizes and modification times have stayed the same for one poll (a
slide still being copied is left alone); a slide stored as several files (a DICOM series, MIRAX, or
a folder holding one such slide) is one slide (common.slide_files). It is then opened with
OpenSlide: readable slides are registered, unreadable ones recorded with the reason, logged once,
and passed over until one of its files changes. The
register is WS/inbox/registry.json. Uncertainty uses the model in WS/federation/model/ only after
its signature checks out against the site's trusted keys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ugafl.client.round.query import uncertainty_dir
from ugafl.client.site_config import SiteConfig
from ugafl.client.round.records import current_model_info, model_dir
from ugafl.common.atomic import atomic_write_text
from ugafl.common.errors import SlideError, UgaflError
from ugafl.common.log import get_logger
from ugafl.common.slide import open_slide
from ugafl.common.slide_files import openslide_path, slides_in
from ugafl.common.correction_patch import CORRECTION_PATCH_UM

log = get_logger("inbox")
REGISTER_CHECK_MPP = 64.0  # a slide is registered once a coarse overview of it reads (µm/px)


def registry_path(workspace: Path) -> Path:
    return workspace / "inbox" / "registry.json"


def read_registry(workspace: Path) -> dict[str, dict]:
    path = registry_path(workspace)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s: unreadable register; starting a new one", path)
        return {}


def scan_inbox(site: SiteConfig, registry: dict[str, dict]) -> list[Path]:
    """Update `registry` from the inbox; the slides registered in this pass.

    The register is keyed by the name of each slide's entry in the inbox: its file, the level-0 file
    of a DICOM series lying loose in the inbox (the other files of the series are part of it), or a
    folder holding one slide's files (common.slide_files)."""
    from ugafl.common.clock import utc_now

    new: list[Path] = []
    slides = slides_in(site.slides)
    for slide in slides:
        path, name = slide.path, slide.path.name
        try:
            seen = slide.signature()
        except OSError:
            continue
        entry = registry.get(name)
        if entry is None or tuple(entry["seen"]) != seen:
            registry[name] = {"seen": list(seen), "state": "pending", "first_seen": utc_now()}
            if len(slide.files) > 1:
                registry[name]["files"] = len(slide.files)
            continue
        if entry["state"] != "pending":
            continue
        try:
            with open_slide(path) as opened:
                opened.thumbnail(REGISTER_CHECK_MPP)  # opens is not enough: some files fail on reading
                entry.update(state="registered", registered=utc_now(), mpp=opened.mpp, size_px=list(opened.dimensions))
            log.info("registered %s (%d x %d px at %.3f µm/px%s)", name, *opened.dimensions, opened.mpp,
                     f", {len(slide.files)} files" if len(slide.files) > 1 else "")
            new.append(path)
        except SlideError as error:
            entry.update(state="unreadable", reason=str(error))
            log.error("%s", error)
    current = {slide.path.name for slide in slides}
    for name in [n for n in registry if n not in current]:  # gone, or now part of another slide
        del registry[name]
    return new


def load_current_model(site: SiteConfig, info: dict):
    """The site's current global model on its device, after checking its signature."""
    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.common.model import pick_device
    from ugafl.common.signing import load_public_key, verify_model
    from ugafl.common.wire import unique_state

    ckpt = load_checkpoint(model_dir(site.workspace) / "current.pt")
    verify_model(unique_state(ckpt.model), info["signed"], [load_public_key(k) for k in site.trusted_keys],
                 "the site's current model")
    device = pick_device(site.device)
    return ckpt.model.to(device).eval(), ckpt.model_config, device


def precompute(site: SiteConfig, registry: dict[str, dict]) -> int:
    """Uncertainty for registered slides that the current model has not scored yet; how many.
    The model is read (and its signature checked) only when there is such a slide."""
    from ugafl.common.uncertainty_methods import method_from_models

    info = current_model_info(site.workspace)
    if info is None:
        return 0
    patch_um = float(info.get("patch_um", CORRECTION_PATCH_UM))
    out = uncertainty_dir(site.workspace, info["version"], info["method"], int(info["passes"]), patch_um)
    todo = [site.slides / n for n, e in sorted(registry.items())
            if e["state"] == "registered" and not (out / Path(n).stem / "summary.json").is_file()]
    if not todo:
        return 0
    model, cfg, device = load_current_model(site, info)
    method = method_from_models(info["method"], [model], cfg, device, int(info["passes"]))
    done = 0
    for path in todo:
        started = time.perf_counter()
        result = _run_one(path, method, out, device, patch_um)
        if result.error is not None:  # recorded, and not tried again until the file changes
            registry[path.name].update(state="unreadable", reason=result.error)
        else:
            done += 1
            log.info("precomputed uncertainty for %s with model %s in %.1f s", path.name, info["version"],
                     time.perf_counter() - started)
    return done


def _run_one(path: Path, method, out: Path, device, patch_um: float):
    """run_uncertainty for one registered slide, its outputs in OUT/<the slide's name>/ as the
    round's query (run_uncertainty over the inbox) writes them. A slide's folder given to
    run_uncertainty is read as a folder of slides, its outputs named after the slide file inside:
    they are computed beside OUT and moved to OUT/<folder name>."""
    from ugafl.client.round.slide_uncertainty import SlideResult, run_uncertainty

    if not path.is_dir():
        return run_uncertainty(path, method, out, progress=False, reuse=True, device=device, patch_um=patch_um)[0]
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=out))
    try:
        try:
            file = openslide_path(path)
        except SlideError as error:
            log.warning("%s", error)
            return SlideResult(path, None, 0, {}, str(error))
        result = run_uncertainty(file, method, staging, progress=False, device=device, patch_um=patch_um)[0]
        if result.error is not None or result.out_dir is None:
            return replace(result, path=path)
        target = out / path.stem
        written = result.out_dir / "summary.json"
        summary = {**json.loads(written.read_text()), "slide": path.name}
        atomic_write_text(written, json.dumps(summary, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(result.out_dir, target)
        return replace(result, path=path, out_dir=target, summary=summary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def watch(config: str | Path, poll_s: float = 30.0, once: bool = False) -> None:
    """Scan, register and precompute every `poll_s` seconds (until killed, or one pass with `once`)."""
    site = SiteConfig.load(config)
    registry = read_registry(site.workspace)
    log.info("watching %s every %.0f s", site.slides, poll_s)
    while True:
        before = json.dumps(registry, sort_keys=True)
        try:
            scan_inbox(site, registry)
        except OSError as error:
            log.error("cannot read the inbox %s: %s", site.slides, error)
        try:
            precompute(site, registry)
        except UgaflError as error:
            log.error("precomputing uncertainty: %s", error)
        if json.dumps(registry, sort_keys=True) != before:
            registry_path(site.workspace).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(registry_path(site.workspace), json.dumps(registry, indent=1, sort_keys=True))
        if once:
            return
        time.sleep(poll_s)


if __name__ == "__main__":
    import sys

    from ugafl.common.log import configure

    configure()
    watch(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
