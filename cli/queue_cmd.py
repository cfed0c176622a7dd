"""`ugafl queue ...`: fill, inspect and maintain the site's correction queue (WS/queue.db)."""

from __future__ import annotations

import getpass
import hashlib
import json
from pathlib import Path

import click

from ugafl.cli.uncertainty_cmd import METHOD_CHOICE
from ugafl.common.patch_scoring import PATCH_SCORING_NAMES
from ugafl.common.selection import SELECTION_NAMES

SELECTION_CHOICE = click.Choice(list(SELECTION_NAMES))
STATE_CHOICE = click.Choice(["pending", "in_review", "corrected", "rejected"])
MEASURE_CHOICE = click.Choice(["entropy", "mutual_information", "uga", "variance"])
WORKSPACE = click.option("--workspace", type=click.Path(path_type=Path), required=True, help="Site workspace folder.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table.")


def _user() -> str:
    try:
        return getpass.getuser() or "unknown"
    except Exception:  # no login name in some containers
        return "unknown"


def _model_version(paths: list[Path]) -> str:
    """The checkpoint's content hash (first 12 hex digits); for several, a hash of their hashes."""
    from ugafl.common.checkpoint import load_checkpoint

    hashes = [load_checkpoint(p).content_hash for p in paths]
    if len(hashes) == 1:
        return hashes[0][:12]
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()[:12]


def _box(item) -> str:
    return f"{item.x},{item.y} {item.width}x{item.height}"


def _stamp(iso: str) -> str:
    """'2026-11-22T16:17:56.123456+00:00' -> '2026-11-22 16:17:56Z'."""
    return iso[:19].replace("T", " ") + "Z"


def item_json(item) -> dict:
    """An item as JSON: its fields by name (paths as strings); the keys are stable."""
    from dataclasses import asdict

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(item).items()}


def audit_json(entry) -> dict:
    return {"at": entry.at, "who": entry.who, "action": entry.action, "from_state": entry.from_state,
            "to_state": entry.to_state, "detail": entry.detail}


def format_table(items) -> str:
    """A fixed-width table of queue items, one line each, under a header."""
    header = ("ID", "STATE", "SLIDE", "BOX (level 0)", "SCORE", "SELECTION", "MODEL", "REVIEWER", "UPDATED")
    rows = [(str(it.id), it.state, it.slide, _box(it), f"{it.score:.4f}", it.selection, it.model_version,
             it.reviewer or "-", _stamp(it.updated_at)) for it in items]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 4}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


@click.group("queue")
def queue() -> None:
    """The site's correction queue: patches proposed for a pathologist to correct."""


@queue.command("select")
@WORKSPACE
@click.option("--slides", "slides_dir", type=click.Path(path_type=Path), required=True,
              help="Folder with the scored slides (found by the file stem in the patch tables).")
@click.option("--model", "models", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Checkpoint the scores were made with; repeat it for an ensemble.")
@click.option("--method", type=METHOD_CHOICE, required=True, help="Which WS/patch_scores/*.<method>.csv to select from.")
@click.option("--selection", type=SELECTION_CHOICE, required=True, help="selection strategy")
@click.option("--budget", type=click.IntRange(1), required=True, help="Patches to queue.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--measure", type=MEASURE_CHOICE, default=None, help="Score to rank by [default: variance for edue, else uga].")
@click.option("--scoring", type=click.Choice(PATCH_SCORING_NAMES), default="mean", show_default=True,
              help="How a patch's map became its score: mean over tissue, or the UGA paper's sum + peak area.")
@click.option("--tumour-reserve", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the budget kept for patches where the model predicts tumour (class-aware selection).")
@click.option("--model-version", default=None, help="Label of the model [default: the checkpoint's content hash].")
@click.option("--round", "round_", type=click.IntRange(0), default=0, show_default=True, help="Annotation round.")
@click.option("--max-per-slide", type=click.IntRange(1), default=None, help="At most this many patches per slide.")
@click.option("--batches", type=click.IntRange(1), default=None, help="stochastic-batch: batches to compare [default: all].")
@click.option("--passes", type=click.IntRange(2, 64), default=8, show_default=True, help="T for mc_dropout and tta.")
@click.option("--mpp", type=float, default=None, help="Override the slides' level-0 resolution, µm/px.")
@click.option("--device", default="auto", show_default=True)
def select_cmd(workspace: Path, slides_dir: Path, models: tuple[Path, ...], method: str, selection: str, budget: int,
               seed: int, measure: str | None, scoring: str, tumour_reserve: float, model_version: str | None, round_: int,
               max_per_slide: int | None,
               batches: int | None, passes: int, mpp: float | None, device: str) -> None:
    """Queue the next BUDGET patches to correct, chosen from the workspace's patch scores."""
    from ugafl.cli.checks import checkpoints, existing_folder, folder_to_write, open_site_queue
    from ugafl.client.queue.fill import FillRequest, fill_queue
    from ugafl.client.queue.store import CorrectionQueue
    from ugafl.common.model import pick_device
    from ugafl.common.uncertainty_methods import load_method

    folder_to_write(workspace, "--workspace")
    if (workspace / "queue.db").exists():  # a queue already there must be one (a new one is made by the fill)
        open_site_queue(workspace).close()
    existing_folder(slides_dir, "--slides", "slide folder")
    paths = checkpoints(models, "--model")
    dev = pick_device(device, "--device")
    version = model_version or _model_version(paths)
    method_obj = load_method(method, paths, dev, passes)
    request = FillRequest(selection, budget, seed, version, round_, measure=measure, batches=batches,
                          max_per_slide=max_per_slide, scoring=scoring, tumour_reserve=tumour_reserve)
    ids = fill_queue(workspace, slides_dir, method_obj, method, request, slide_mpp=mpp, device=dev)
    if not ids:
        click.echo("no patches queued: every scored patch is already queued or has no score")
        return
    with CorrectionQueue(workspace) as q:
        click.echo(f"queued {len(ids)} patch(es) ({selection}, model {version}, round {round_}):")
        click.echo(format_table([q.get(i) for i in ids]))


@queue.command("list")
@WORKSPACE
@click.option("--state", type=STATE_CHOICE, default=None, help="Only items in this state.")
@AS_JSON
def list_cmd(workspace: Path, state: str | None, as_json: bool) -> None:
    """The queue's items, by id, with a count per state. --json: {"items": [...], "counts": {...}}."""
    from ugafl.cli.checks import open_site_queue

    with open_site_queue(workspace) as q:
        items = q.list(state)
        counts = q.counts()
    if as_json:
        click.echo(json.dumps({"workspace": str(workspace), "state": state, "items": [item_json(i) for i in items],
                               "counts": counts}, indent=1))
        return
    if items:
        click.echo(format_table(items))
    else:
        click.echo("no items" + (f" in state {state}" if state else ""))
    click.echo(", ".join(f"{k} {v}" for k, v in counts.items()))


@queue.command("show")
@WORKSPACE
@click.argument("item_id", type=int)
@AS_JSON
def show_cmd(workspace: Path, item_id: int, as_json: bool) -> None:
    """One item's fields and its audit history. --json: {"item": {...}, "history": [...]}."""
    from ugafl.cli.checks import open_site_queue

    from ugafl.client.queue.store import QueueError

    with open_site_queue(workspace) as q:
        try:
            item = q.get(item_id)
        except QueueError as error:  # say which workspace it is not in
            raise QueueError(f"{error} in the queue of {workspace} (`ugafl queue list --workspace {workspace}`)") from None
        history = q.history(item_id)
    if as_json:
        click.echo(json.dumps({"item": item_json(item), "history": [audit_json(e) for e in history]}, indent=1))
        return
    fields = [("id", item.id), ("state", item.state), ("slide", item.slide), ("box (level 0)", _box(item)),
              ("mpp", f"{item.mpp:g}"), ("score", f"{item.score:.6g}"), ("measure", item.measure),
              ("selection", item.selection), ("model version", item.model_version), ("round", item.round),
              ("reviewer", item.reviewer or "-"), ("created", item.created_at), ("updated", item.updated_at),
              ("image", item.image_path), ("model mask", item.model_mask_path), ("uncertainty", item.uncertainty_path),
              ("correction", item.correction_path or "-")]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
    click.echo("history:")
    for entry in history:
        moved = f"{entry.from_state or '-'} -> {entry.to_state}"
        detail = json.dumps(entry.detail, sort_keys=True) if entry.detail else ""
        click.echo(f"  {entry.at}  {entry.action:<11} {moved:<24} by {entry.who}  {detail}".rstrip())


@queue.command("reset-stale")
@WORKSPACE
@click.option("--older-than", type=click.FloatRange(0), required=True, help="Seconds a claim may sit untouched.")
@click.option("--who", default=None, help="Recorded in the audit [default: your login name].")
def reset_stale_cmd(workspace: Path, older_than: float, who: str | None) -> None:
    """Return items claimed (in_review) longer ago than --older-than seconds to pending."""
    from ugafl.cli.checks import open_site_queue

    with open_site_queue(workspace) as q:
        n = q.reset_stale(older_than, who or _user())
    click.echo(f"returned {n} stale item(s) to pending")


@queue.command("annotate")
@WORKSPACE
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Dataset folder with manifest.json.")
@click.option("--rater", type=click.IntRange(1), default=None, help="Use simulated rater K's mask instead of the truth.")
@click.option("--boundary-noise", type=click.IntRange(0), default=0, show_default=True,
              help="Dilate/erode each mask by a random 0..PX pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(0), default=None, help="Correct at most this many items.")
@click.option("--who", default="simulated-annotator", show_default=True, help="Recorded as the reviewer.")
def annotate_cmd(workspace: Path, data_dir: Path, rater: int | None, boundary_noise: int, seed: int, limit: int | None,
                 who: str) -> None:
    """Simulated annotator: correct the open items with the dataset's truth (or a rater's) masks."""
    from ugafl.cli.checks import site_queue
    from ugafl.common.manifest import load_manifest
    from ugafl.simulations.annotator import annotate

    site_queue(workspace)
    load_manifest(data_dir)
    n = annotate(workspace, data_dir, who=who, rater=rater, boundary_noise_px=boundary_noise, seed=seed, limit=limit)
    click.echo(f"{who} corrected {n} item(s)")


@queue.command("export")
@WORKSPACE
@click.option("--format", "fmt", type=click.Choice(["geojson", "asap"]), default="geojson", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to write into: one file per slide, <slide>.geojson or <slide>.xml.")
@click.option("--state", type=STATE_CHOICE, default="pending", show_default=True)
@click.option("--slide", default=None, help="Only this slide's items [default: every slide, a file each].")
def export_cmd(workspace: Path, fmt: str, out: Path, state: str, slide: str | None) -> None:
    """Export queued patches with the model's contour for QuPath (GeoJSON) or ASAP (XML), one file per slide."""
    from ugafl.cli.checks import site_queue
    from ugafl.client.annotations.exchange import export_queue

    site_queue(workspace)
    written = export_queue(workspace, out, fmt, state, slide)
    for done in written:
        click.echo(f"{done.slide}: {done.items} item(s) -> {done.path}")
    click.echo(f"exported {sum(d.items for d in written)} item(s) in state {state} of {len(written)} slide(s) to {out}")


@queue.command("import")
@WORKSPACE
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["geojson", "asap", "png"]), default=None,
              help="The file's format [default: by its name: .xml asap, .png png, else geojson].")
@click.option("--item", "item_id", type=int, default=None, help="The item a PNG mask belongs to.")
@click.option("--slide", default=None,
              help="The slide the file is for [default: the one it names inside, else its file name].")
@click.option("--tumour-class", "tumour_classes", multiple=True, metavar="NAME",
              help="A class (QuPath) or group (ASAP) imported as tumour; repeat for several "
                   "[default: Tumor, Tumour, metastases, _0, _1; unclassified counts as tumour].")
@click.option("--who", default=None, help="Who corrected (default: the login name).")
def import_cmd(workspace: Path, path: Path, fmt: str | None, item_id: int | None, slide: str | None,
               tumour_classes: tuple[str, ...], who: str | None) -> None:
    """Import one slide's corrected annotations (QuPath GeoJSON, ASAP XML, or one item's PNG mask)."""
    from ugafl.cli.checks import existing_file, site_queue
    from ugafl.client.annotations.exchange import import_file
    from ugafl.client.annotations.geometry import TUMOUR_CLASSES

    site_queue(workspace)
    existing_file(path, "PATH", "annotation file")
    fmt = fmt or {".xml": "asap", ".png": "png"}.get(path.suffix.lower(), "geojson")

    done = import_file(workspace, path, fmt, who or _user(), item_id, slide, tumour_classes or TUMOUR_CLASSES)
    for line in done.warnings:
        click.echo(f"warning: {line}", err=True)
    click.echo(f"imported corrections for {len(done.ids)} item(s) of slide {done.slide}: {', '.join(map(str, done.ids))}")
