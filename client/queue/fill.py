"""Fill the site's correction queue: pick the next B patches from the workspace's patch-score
tables (WS/patch_scores/<slide stem>.<method>.csv, written by `ugafl uncertainty --workspace`),
skip every box that overlaps one already queued (any state, any model version), and queue each
chosen patch with its image, the model's mask and the per-pixel uncertainty map, so a
pathologist (or the simulated annotator) can correct it.

Three steps: `plan` (candidates, exclusion of taken boxes, selection, each box's mpp; no pixel
read), `prepare` (find every slide, compute every patch's image, model mask and uncertainty;
nothing written), `commit` (add them all). `fill_queue` runs them in turn, so everything a patch
needs is computed and every slide is found before the first item is added: a missing slide or an
unreadable patch leaves the queue unchanged.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ugafl.client.queue.new_item import NewItem, PatchOrigin, PatchPixels, PatchReason
from ugafl.client.queue.store import CorrectionQueue
from ugafl.common.selection import SELECTION_NAMES, Candidates, load_candidates, overlaps_any, select, slide_name
from ugafl.common.errors import ConfigError, DataError
from ugafl.common.log import get_logger
from ugafl.common.model import to_input
from ugafl.common.patch_scoring import PATCH_SCORING_NAMES, score_column
from ugafl.common.slide import open_slide
from ugafl.common.slide_scan import candidate_files
from ugafl.common.uncertainty_measures import PIXEL_MEASURES, compute_measures, default_measure
from ugafl.common.uncertainty_methods import UncertaintyMethod

log = get_logger("queue_fill")

TUMOUR_COLUMN = "tumour_fraction"  # the patch tables' share of a patch's tissue the model calls tumour



@dataclass(frozen=True)
class FillRequest:
    """What to queue. Which: `budget` patches chosen by the `selection` strategy with `seed`,
    ranked by `measure` (None: `default_measure` of the method) reduced by the patch scoring
    `scoring`, comparing at most `batches`
    batches (stochastic-batch; None: all) and taking at most `max_per_slide` per slide (None: no
    limit). For whom: the model `model_version` in annotation round `round`."""

    selection: str
    budget: int
    seed: int
    model_version: str
    round: int = 0
    measure: str | None = None
    batches: int | None = None
    max_per_slide: int | None = None
    scoring: str = "mean"  # how the patch's map became its score (common.patch_scoring)
    tumour_reserve: float = 0.0  # share of the budget kept for patches where the model predicts tumour


@dataclass(frozen=True)
class PlannedPatch:
    """A chosen patch before its pixels are read: where it is and its score."""

    origin: PatchOrigin
    score: float


def score_tables(workspace: str | Path, method_name: str) -> list[Path]:
    """WS/patch_scores/*.<method_name>.csv, sorted by name."""
    folder = Path(workspace) / "patch_scores"
    return sorted(p for p in folder.glob(f"*.{method_name}.csv") if p.is_file()) if folder.is_dir() else []


def find_slide(slides_dir: Path, stem: str) -> Path:
    """The slide file `<stem>.*` in `slides_dir` (not recursive); DataError naming the stem if absent."""
    matches = [p for p in candidate_files(slides_dir) if p.stem == stem]
    if not matches:
        raise DataError(f"{slides_dir}: no slide file named {stem}.* (the patch scores in the workspace name slide "
                        f"'{stem}'); pass the folder the slides were scored from with --slides")
    if len(matches) > 1:
        log.warning("%s: several files named %s.*: using %s", slides_dir, stem, matches[0].name)
    return matches[0]


def _read_row_mpp(path: Path, boxes: set[tuple[int, int, int, int]]) -> dict[tuple[int, int, int, int], float]:
    """mpp of the rows of one patch-score table whose box is in `boxes`."""
    out: dict[tuple[int, int, int, int], float] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                box = tuple(int(round(float(row[k]))) for k in ("x", "y", "width", "height"))
            except (KeyError, TypeError, ValueError):
                continue
            if box in boxes and box not in out:
                try:
                    out[box] = float(row["mpp"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{path}: the row of box {box} has no valid 'mpp' value") from None
    return out


def _read_patch(slide, box: tuple[int, int, int, int], mpp: float) -> np.ndarray:
    """The square level-0 box at `mpp` as RGB uint8 (S, S, 3), S = its side at `mpp` (as the
    uncertainty job read it: a read off by a pixel from rounding is resized)."""
    x, y, w, h = box
    size = max(1, round(w * slide.mpp / mpp))
    rgb = slide.read_region((x, y), (w, h), mpp)
    if rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(rgb)
    if max(abs(rgb.shape[0] - size), abs(rgb.shape[1] - size)) > 2:
        raise DataError(f"{slide.path}: box {box} is {rgb.shape[1]}x{rgb.shape[0]} px at {mpp:g} µm/px, not the "
                        f"{size} px square its level-0 size gives: were the scores made with another --mpp?")
    return np.array(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))  # writable, unlike asarray


def patch_outputs(method: UncertaintyMethod, image: np.ndarray, measure: str,
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(model mask bool (H, W): mean tumour probability >= 0.5, uncertainty float32 (H, W) of `measure`)."""
    out = method(to_input(image[None], device))
    prob = out.probs.mean(dim=0)[0, 1].cpu().numpy()
    if measure == "variance":
        if out.variance is None:
            raise ConfigError(f"measure 'variance' needs the edue method (a model with a disagreement head), "
                              f"not {method.name}")
        unc = out.variance[0].cpu().numpy()
    else:
        unc = compute_measures(out.probs)[measure][0].cpu().numpy()
    return prob >= 0.5, unc.astype(np.float32)


def check_request(request: FillRequest, method_name: str) -> FillRequest:
    """`request` with its measure filled in (default_measure of `method_name`); ConfigError naming
    what is wrong."""
    measure = request.measure or default_measure(method_name)
    if request.selection not in SELECTION_NAMES:
        raise ConfigError(f"unknown selection strategy {request.selection!r}; "
                          f"choose one of {', '.join(SELECTION_NAMES)}")
    if measure not in PIXEL_MEASURES:
        raise ConfigError(f"unknown measure {measure!r}; choose one of {', '.join(PIXEL_MEASURES)}")
    if request.scoring not in PATCH_SCORING_NAMES:
        raise ConfigError(f"unknown patch scoring {request.scoring!r}; choose one of {', '.join(PATCH_SCORING_NAMES)}")
    budget = request.budget
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ConfigError(f"budget must be a positive number of patches, got {budget!r}")
    if request.max_per_slide is not None and request.max_per_slide < 1:
        raise ConfigError(f"max_per_slide must be >= 1, got {request.max_per_slide}")
    if request.batches is not None and request.batches < 1:
        raise ConfigError(f"batches must be >= 1, got {request.batches}")
    if not 0.0 <= request.tumour_reserve <= 1.0:
        raise ConfigError(f"tumour_reserve must be a share between 0 and 1, got {request.tumour_reserve}")
    return replace(request, measure=measure)


def plan(tables: list[Path], taken: list[tuple[str, int, int, int, int]], request: FillRequest,
         default_mpp: float) -> list[PlannedPatch]:
    """The patches to queue, in selection order, without reading a pixel: candidates from the
    patch-score `tables` ranked by the request's measure (`check_request` fills it in), minus the
    ones overlapping a `taken` (slide, x, y, w, h) box, chosen by the request's selection. Each
    box's mpp is its row's (`default_mpp` µm/px if the row has none)."""
    cand, names = load_candidates(tables, score_column(_measure(request), request.scoring))
    reserved = round(request.tumour_reserve * int(request.budget))
    # the same rows in the same order: the share of each patch's tissue the model calls tumour
    tumour = load_candidates(tables, TUMOUR_COLUMN)[0].score if reserved else None
    index = {name: i for i, name in enumerate(names)}
    taken = [t for t in taken if t[0] in index]
    if taken:
        arr = np.array([t[1:] for t in taken], np.int64)
        taken_c = Candidates(np.array([index[t[0]] for t in taken], np.int64), arr[:, 0], arr[:, 1], arr[:, 2],
                             arr[:, 3], np.zeros(len(taken)))
        free = ~overlaps_any(cand, taken_c)
        log.info("%d of %d candidates overlap %d queued boxes and are skipped", int((~free).sum()), len(cand), len(taken))
        cand, tumour = cand.take(free), (None if tumour is None else tumour[free])
    if tumour is not None:
        chosen_idx = with_tumour_reserve(cand, tumour > 0, reserved, request)
    else:
        chosen_idx = select(cand, request.selection, int(request.budget), int(request.seed), batches=request.batches,
                            max_per_slide=request.max_per_slide)
    chosen = [(names[int(cand.slide[i])], (int(cand.x[i]), int(cand.y[i]), int(cand.width[i]), int(cand.height[i])),
               float(cand.score[i])) for i in chosen_idx]
    row_mpp = _row_mpps(tables, chosen)
    return [PlannedPatch(PatchOrigin(stem, box, row_mpp.get(stem, {}).get(box, default_mpp)), score)
            for stem, box, score in chosen]


def with_tumour_reserve(cand: Candidates, tumour: np.ndarray, reserved: int, request: FillRequest) -> np.ndarray:
    """Class-aware selection: the request's strategy picks `reserved` of the budget among the
    candidates where the model predicts tumour (`tumour`, bool (N,)), then the rest of the budget
    among all that do not overlap those; at most `max_per_slide` per slide over both. Indices
    into `cand`, the reserved ones first."""
    budget, cap = int(request.budget), request.max_per_slide

    def pick(idx: np.ndarray, count: int) -> np.ndarray:
        if count <= 0 or not len(idx):
            return np.zeros(0, np.int64)
        return idx[select(cand.take(idx), request.selection, count, int(request.seed), batches=request.batches,
                          max_per_slide=cap)]

    first = pick(np.flatnonzero(tumour & np.isfinite(cand.score)), min(reserved, budget))
    rest = np.ones(len(cand), bool)
    rest[first] = False
    if len(first):
        rest &= ~overlaps_any(cand, cand.take(first))
    if cap is not None:  # slides the reserved patches filled take no more
        slides, counts = np.unique(cand.slide[first], return_counts=True)
        rest &= ~np.isin(cand.slide, slides[counts >= cap])
    second = pick(np.flatnonzero(rest), budget - len(first))
    if cap is not None:  # and the others take only what is left of their cap
        used = dict(zip(*np.unique(cand.slide[first], return_counts=True)))
        kept = []
        for i in second:
            s = int(cand.slide[i])
            if used.get(s, 0) < cap:
                used[s] = used.get(s, 0) + 1
                kept.append(i)
        second = np.asarray(kept, np.int64)
    log.info("class-aware selection: %d of %d patches where tumour is predicted, %d from all", len(first), budget,
             len(second))
    return np.concatenate([first, second]).astype(np.int64)


def _row_mpps(tables: list[Path], chosen: list[tuple[str, tuple[int, int, int, int], float]]) -> dict[str, dict]:
    """slide -> box -> mpp of each chosen box, from its own slide's table(s) (the first row wins)."""
    by_slide: dict[str, set] = {}
    for stem, box, _ in chosen:
        by_slide.setdefault(stem, set()).add(box)
    row_mpp: dict[str, dict] = {}
    for path in tables:
        stem = slide_name(path)
        if stem in by_slide:
            known = row_mpp.setdefault(stem, {})
            for box, mpp in _read_row_mpp(path, by_slide[stem]).items():
                known.setdefault(box, mpp)
    return row_mpp


def prepare(planned: list[PlannedPatch], slides_dir: Path, method: UncertaintyMethod, request: FillRequest, *,
            slide_mpp: float | None = None, device: torch.device | str = "cpu") -> list[NewItem]:
    """Every planned patch with its pixels, in plan order, writing nothing: finds every slide
    (`<stem>.*` in `slides_dir`) first, then reads each box at its mpp (`slide_mpp` overrides the
    slides' level-0 µm/px) and runs `method` for the model's mask (p̄ >= 0.5) and the measure map.
    Raises (DataError) on a missing slide or an unreadable patch."""
    measure = _measure(request)
    files = {stem: find_slide(slides_dir, stem) for stem in dict.fromkeys(p.origin.slide for p in planned)}
    pixels: dict[int, PatchPixels] = {}
    for stem, path in files.items():
        with open_slide(path, slide_mpp) as slide:
            for k, p in enumerate(planned):
                if p.origin.slide == stem:
                    image = _read_patch(slide, p.origin.box, p.origin.mpp)
                    mask, unc = patch_outputs(method, image, measure, device)
                    pixels[k] = PatchPixels(image, mask, unc)
    return [NewItem(p.origin, PatchReason(p.score, measure, request.selection, request.model_version,
                                          int(request.round)), pixels[k])
            for k, p in enumerate(planned)]


def commit(queue: CorrectionQueue, items: list[NewItem]) -> list[int]:
    """Add the prepared items to `queue` in order; their new ids."""
    return [queue.add(item) for item in items]


def fill_queue(workspace: str | Path, slides_dir: str | Path, method: UncertaintyMethod, method_name: str,
               request: FillRequest, *, slide_mpp: float | None = None,
               device: torch.device | str = "cpu") -> list[int]:
    """Select the request's budget of patches from WS/patch_scores/*.<method_name>.csv and queue
    them; returns the new item ids in selection order (none when every candidate is taken).
    `plan`, then `prepare`, then `commit`: nothing is added before every patch is ready, so a
    missing slide or an unreadable patch leaves the queue unchanged. Deterministic for a seed."""
    workspace, slides_dir = Path(workspace), Path(slides_dir)
    request = check_request(request, method_name)
    if not slides_dir.is_dir():
        raise DataError(f"{slides_dir}: slides folder not found")
    tables = score_tables(workspace, method_name)
    if not tables:
        raise DataError(f"{workspace / 'patch_scores'}: no patch-score tables for method {method_name} "
                        f"(*.{method_name}.csv); run `ugafl uncertainty SLIDES --method {method_name} "
                        f"--workspace {workspace} ...` first")
    with CorrectionQueue(workspace) as queue:
        planned = plan(tables, queue.taken_boxes(), request, method.cfg.mpp)
        if not planned:
            log.warning("no candidate patch left to queue (all scored patches are queued or have no score)")
            return []
        ids = commit(queue, prepare(planned, slides_dir, method, request, slide_mpp=slide_mpp, device=device))
    log.info("queued %d patches (%s by %s, %s scoring, model %s, round %d)", len(ids), request.selection,
             request.measure, request.scoring, request.model_version, request.round)
    return ids


def _measure(request: FillRequest) -> str:
    if request.measure is None:
        raise ConfigError("the fill request has no measure: pass it through check_request first")
    return request.measure
