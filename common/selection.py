"""Which patches a pathologist should correct next: pick B of the site's unlabelled candidate
patches from their uncertainty scores.

Candidates come from the patch-score tables that `ugafl uncertainty` writes into the site
workspace (WS/patch_scores/<slide stem>.<method>.csv). All boxes are level-0 pixels
(x, y = top-left corner, width, height); two boxes overlap when they are on the same slide and
their interiors intersect (boxes that only share an edge or a corner do not overlap).

Strategies (`select`):

* ``top-k`` (the UGA paper): the B highest scores, ties broken by lower index.
* ``stochastic-batch`` (Gaillochet et al., "Stochastic batch acquisition for deep active
  segmentation"): shuffle the valid candidates with the seed, cut the shuffle into Q = ⌊N/B⌋
  disjoint batches of B (or only the first `batches` of them), return the batch with the highest
  mean score.
* ``random``: B valid candidates uniformly at random.

Everything is vectorised numpy; 10^6 candidates take well under a second (benchmarks/selection.py).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ugafl.common.errors import DataError
from ugafl.common.log import get_logger

log = get_logger("selection")

BOX_COLUMNS = ("x", "y", "width", "height")


@dataclass(frozen=True)
class Candidates:
    """N candidate patches, one entry per array position (columnar).

    slide: int (N,) index of the slide (into the slide-name list `load_candidates` returns);
    x, y, width, height: int (N,) level-0 box, top-left corner and size in pixels;
    score: float (N,) patch uncertainty score; NaN/inf = no usable score (e.g. no tissue),
    such a patch is never selected.
    """

    slide: np.ndarray
    x: np.ndarray
    y: np.ndarray
    width: np.ndarray
    height: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        n = None
        for name in ("slide", *BOX_COLUMNS, "score"):
            arr = np.asarray(getattr(self, name), dtype=np.float64 if name == "score" else np.int64)
            if arr.ndim != 1:
                raise ValueError(f"Candidates.{name} must be 1-D, got shape {arr.shape}")
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ValueError(f"Candidates.{name} has {arr.shape[0]} entries, expected {n} like Candidates.slide")
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.slide.shape[0])

    def take(self, idx: np.ndarray) -> Candidates:
        """The candidates at positions `idx` (an index or boolean mask array)."""
        return Candidates(self.slide[idx], self.x[idx], self.y[idx], self.width[idx], self.height[idx], self.score[idx])

    @staticmethod
    def empty() -> Candidates:
        z = np.zeros(0, np.int64)
        return Candidates(z, z, z, z, z, np.zeros(0, np.float64))


# --------------------------------------------------------------------------- loading

def slide_name(path: Path) -> str:
    """The slide stem of a patch-score file: `<stem>.<method>.csv` -> `<stem>` (`<stem>.csv` -> `<stem>`)."""
    name = path.name[:-4] if path.name.lower().endswith(".csv") else path.name
    return name.rsplit(".", 1)[0] if "." in name else name


def _parse(value: str, path: Path, line: int, column: str) -> float:
    if value.strip() == "":
        return math.nan  # the engine writes a patch without tissue as an empty cell
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}: line {line}, column '{column}': not a number: {value!r}") from None


def load_candidates(paths: list[Path], measure: str = "uga") -> tuple[Candidates, list[str]]:
    """Candidates from patch-score CSVs (columns x, y, width, height, ..., `measure`).

    Returns the candidates (score = the `measure` column, an empty cell is NaN) and the slide
    names their `slide` indices point into (one per distinct slide stem, in order of first
    appearance; two files of the same slide share an index). A file with a header but no rows
    contributes nothing. Raises DataError naming the file and the column when a box column or
    the measure column is missing, or a value is not a number.
    """
    names: list[str] = []
    index: dict[str, int] = {}
    parts: list[tuple[int, np.ndarray]] = []
    for path in map(Path, paths):
        try:
            with path.open(newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                rows = list(reader)
        except OSError as exc:
            raise DataError(f"{path}: cannot read patch-score table: {exc.strerror or exc}") from None
        if header is None:
            raise DataError(f"{path}: empty file, expected a patch-score table with a header row")
        header = [h.strip() for h in header]
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        name = slide_name(path)
        if not rows:
            log.info("%s: no patches, nothing to select from this slide", path)
            continue
        wanted = (*BOX_COLUMNS, measure)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(repr(c) for c in missing)} "
                            f"(columns: {', '.join(header)}); was it scored with a method that has measure '{measure}'?")
        cols = [header.index(c) for c in wanted]
        table = np.empty((len(rows), len(wanted)), np.float64)
        for i, row in enumerate(rows):
            if len(row) < len(header):
                raise DataError(f"{path}: line {i + 2} has {len(row)} fields, the header has {len(header)}")
            table[i] = [_parse(row[j], path, i + 2, c) for j, c in zip(cols, wanted)]
        if not np.isfinite(table[:, :4]).all():
            bad = int(np.flatnonzero(~np.isfinite(table[:, :4]).all(axis=1))[0])
            raise DataError(f"{path}: line {bad + 2}: empty or non-finite box coordinate")
        if name not in index:
            index[name] = len(names)
            names.append(name)
        parts.append((index[name], table))
    if not parts:
        return Candidates.empty(), names
    slide = np.concatenate([np.full(len(t), s, np.int64) for s, t in parts])
    table = np.concatenate([t for _, t in parts])
    box = np.rint(table[:, :4]).astype(np.int64)
    cand = Candidates(slide, box[:, 0], box[:, 1], box[:, 2], box[:, 3], table[:, 4])
    log.debug("loaded %d candidates (%d with a finite %s) from %d files", len(cand), int(np.isfinite(cand.score).sum()),
              measure, len(paths))
    return cand, names


# --------------------------------------------------------------------------- overlap

def _cell_keys(slide: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, cell: int,
               origin: tuple[int, int], span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(owner, key) for every grid cell of side `cell` px that each box's interior touches."""
    x0 = (x - origin[0]) // cell
    y0 = (y - origin[1]) // cell
    x1 = (x + np.maximum(w, 1) - 1 - origin[0]) // cell  # last pixel column inside the box
    y1 = (y + np.maximum(h, 1) - 1 - origin[1]) // cell
    nx = x1 - x0 + 1
    ny = y1 - y0 + 1
    count = nx * ny
    owner = np.repeat(np.arange(len(x)), count)
    k = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)  # 0..count-1 within a box
    cx = x0[owner] + k % nx[owner]
    cy = y0[owner] + k // nx[owner]
    key = (slide[owner] * span[0] + cx) * span[1] + cy
    return owner, key


def _overlap(ax, ay, aw, ah, bx, by, bw, bh) -> np.ndarray:
    """Interiors intersect (touching edges do not count); broadcasts."""
    return (ax < bx + bw) & (bx < ax + aw) & (ay < by + bh) & (by < ay + ah)


def overlaps_any(c: Candidates, boxes: Candidates) -> np.ndarray:
    """bool (N,): candidate i overlaps at least one box in `boxes` on the same slide.

    Grid hashing: the boxes are entered into the cells (side = median box size) their interiors
    touch, sorted by cell key; each candidate looks up its own cells with searchsorted and only the
    pairs sharing a cell are tested exactly. Cost ~ (N + M) log M.
    """
    hit = np.zeros(len(c), bool)
    keep_b = (boxes.width > 0) & (boxes.height > 0)
    if len(c) == 0 or not keep_b.any():
        return hit
    boxes = boxes.take(keep_b)
    cell = max(1, int(np.median(np.maximum(boxes.width, boxes.height))))
    lo_x = int(min(c.x.min(), boxes.x.min()))
    lo_y = int(min(c.y.min(), boxes.y.min()))
    hi_x = int(max((c.x + np.maximum(c.width, 1)).max(), (boxes.x + boxes.width).max()))
    hi_y = int(max((c.y + np.maximum(c.height, 1)).max(), (boxes.y + boxes.height).max()))
    span = ((hi_x - lo_x) // cell + 2, (hi_y - lo_y) // cell + 2)
    n_slides = int(max(c.slide.max(), boxes.slide.max())) + 1
    if n_slides * span[0] * span[1] >= 2 ** 62:
        raise ValueError("overlap grid too large for int64 keys: coordinates or slide indices out of range")
    b_owner, b_key = _cell_keys(boxes.slide, boxes.x, boxes.y, boxes.width, boxes.height, cell, (lo_x, lo_y), span)
    order = np.argsort(b_key, kind="stable")
    b_key = b_key[order]
    b_owner = b_owner[order]
    valid = (c.width > 0) & (c.height > 0)
    cand_idx = np.flatnonzero(valid)
    sub = c.take(cand_idx)
    q_owner, q_key = _cell_keys(sub.slide, sub.x, sub.y, sub.width, sub.height, cell, (lo_x, lo_y), span)
    lo = np.searchsorted(b_key, q_key, "left")
    hi = np.searchsorted(b_key, q_key, "right")
    n = hi - lo
    present = n > 0
    q_owner, lo, n = q_owner[present], lo[present], n[present]
    pair_c = np.repeat(q_owner, n)
    pair_b = b_owner[np.repeat(lo, n) + (np.arange(pair_c.size) - np.repeat(np.cumsum(n) - n, n))]
    ov = _overlap(sub.x[pair_c], sub.y[pair_c], sub.width[pair_c], sub.height[pair_c],
                  boxes.x[pair_b], boxes.y[pair_b], boxes.width[pair_b], boxes.height[pair_b])
    hit[cand_idx[pair_c[ov]]] = True  # same cell key implies same slide
    return hit


def exclude(c: Candidates, taken: Candidates) -> Candidates:
    """The candidates that overlap no box of `taken` (already queued or labelled) on the same slide.

    `taken` uses the same slide indexing as `c`; its scores are ignored. Order is kept.
    """
    if len(taken) == 0 or len(c) == 0:
        return c
    hit = overlaps_any(c, taken)
    log.debug("exclude: %d of %d candidates overlap %d taken boxes", int(hit.sum()), len(c), len(taken))
    return c.take(~hit)


# --------------------------------------------------------------------------- selection

def _greedy(c: Candidates, order: np.ndarray, budget: int, max_per_slide: int | None) -> np.ndarray:
    """Walk `order` (indices into c, highest priority first), accept a candidate unless it
    overlaps an already accepted one or its slide already has `max_per_slide` accepted; stop at
    `budget`. Chunked and vectorised: each acceptance filters the rest of the current chunk."""
    accepted: list[int] = []
    per_slide: dict[int, int] = {}
    ax: list[int] = []
    ay: list[int] = []
    aw: list[int] = []
    ah: list[int] = []
    asl: list[int] = []
    cap = max_per_slide if max_per_slide is not None else budget + 1
    pos = 0
    chunk = max(4 * budget, 256)
    while len(accepted) < budget and pos < len(order):
        idx = order[pos:pos + chunk]
        pos += chunk
        chunk *= 2  # many rejections: look further ahead at once
        if accepted:
            full = np.array([s for s, k in per_slide.items() if k >= cap], np.int64)
            keep = ~np.isin(c.slide[idx], full)
            A = np.array([asl, ax, ay, aw, ah], np.int64)
            clash = (c.slide[idx, None] == A[0]) & _overlap(c.x[idx, None], c.y[idx, None], c.width[idx, None],
                                                            c.height[idx, None], A[1], A[2], A[3], A[4])
            idx = idx[keep & ~clash.any(axis=1)]
        while idx.size and len(accepted) < budget:
            i = int(idx[0])
            s = int(c.slide[i])
            accepted.append(i)
            per_slide[s] = per_slide.get(s, 0) + 1
            for store, value in ((asl, s), (ax, c.x[i]), (ay, c.y[i]), (aw, c.width[i]), (ah, c.height[i])):
                store.append(int(value))
            rest = idx[1:]
            same = c.slide[rest] == s
            drop = same & _overlap(c.x[rest], c.y[rest], c.width[rest], c.height[rest], ax[-1], ay[-1], aw[-1], ah[-1])
            if per_slide[s] >= cap:
                drop |= same
            idx = rest[~drop]
    return np.asarray(accepted, np.int64)


def _top_k_order(score: np.ndarray, valid: np.ndarray, need: int) -> np.ndarray:
    """Valid indices by descending score, ties by ascending index; only (about) the best `need`
    when need < number valid, else all."""
    idx = np.flatnonzero(valid)
    if need < idx.size:
        kth = np.partition(score[idx], idx.size - need)[idx.size - need]  # need-th highest
        idx = idx[score[idx] >= kth]  # all ties of the threshold included
    return idx[np.lexsort((idx, -score[idx]))]


def _by_top_k(c: Candidates, valid: np.ndarray, budget: int, seed: int, batches: int | None,
              max_per_slide: int | None) -> np.ndarray:
    """The UGA paper: the highest scores, walked greedily (see `select`)."""
    n = int(valid.sum())
    order = _top_k_order(c.score, valid, budget)
    chosen = _greedy(c, order, budget, max_per_slide)
    if chosen.size < budget and order.size < n:  # conflicts ate the short list: use the full order
        chosen = _greedy(c, _top_k_order(c.score, valid, n), budget, max_per_slide)
    return chosen


def _permutation(c: Candidates, valid: np.ndarray, seed: int) -> np.ndarray:
    eligible = np.flatnonzero(valid)
    return eligible[np.random.default_rng(seed).permutation(eligible.size)]


def _by_random(c: Candidates, valid: np.ndarray, budget: int, seed: int, batches: int | None,
               max_per_slide: int | None) -> np.ndarray:
    """The baseline: a seeded permutation of the eligible candidates, walked greedily."""
    return _greedy(c, _permutation(c, valid, seed), budget, max_per_slide)


def _by_stochastic_batch(c: Candidates, valid: np.ndarray, budget: int, seed: int, batches: int | None,
                         max_per_slide: int | None) -> np.ndarray:
    """Gaillochet et al.: the best-scoring of Q random disjoint batches of B (see `select`)."""
    perm = _permutation(c, valid, seed)
    n = perm.size
    if n <= budget:
        return _greedy(c, perm, budget, max_per_slide)
    q_max = n // budget
    q = q_max if batches is None else min(batches, q_max)
    if batches is not None and batches > q_max:
        log.info("stochastic-batch: %d batches asked, only %d fit %d candidates at budget %d", batches, q_max, n, budget)
    means = c.score[perm[:q * budget]].reshape(q, budget).mean(axis=1)
    best = int(np.argmax(means))
    lo, hi = best * budget, (best + 1) * budget
    order = np.concatenate([perm[lo:hi], perm[hi:], perm[:lo]])
    log.debug("stochastic-batch: %d batches of %d, best #%d mean %.4g (max single score %.4g)", q, budget, best,
              means[best], float(c.score[perm[:q * budget]].max()))
    return _greedy(c, order, budget, max_per_slide)


Selection = Callable[[Candidates, np.ndarray, int, int, "int | None", "int | None"], np.ndarray]
SELECTIONS: dict[str, Selection] = {
    "stochastic-batch": _by_stochastic_batch,
    "top-k": _by_top_k,
    "random": _by_random,
}
"""The selection strategies by name: the one place their names live (sites and coordinator both read it)."""
SELECTION_NAMES: tuple[str, ...] = tuple(SELECTIONS)


def check_selection(name: str) -> str:
    """`name` if it is a selection strategy; else ValueError listing them."""
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection strategy {name!r}; choose one of {', '.join(SELECTION_NAMES)}")
    return name


def select(c: Candidates, strategy: str, budget: int, seed: int, batches: int | None = None,
           max_per_slide: int | None = None) -> np.ndarray:
    """Indices into `c` (int64, length <= budget) of the patches to annotate next, in priority order.

    Only candidates with a finite score are eligible. The chosen patches never overlap each other
    and at most `max_per_slide` come from one slide. How conflicts are resolved, per strategy:

    * top-k: walk the eligible candidates by descending score (ties: lower index first), skipping
      any that overlaps an accepted one or whose slide is full, until `budget` are accepted.
    * stochastic-batch: permute the N eligible candidates with `np.random.default_rng(seed)`,
      cut the first Q·B of the permutation into Q consecutive batches of B (Q = ⌊N/B⌋, or
      `batches` when given, clamped to ⌊N/B⌋), take the batch with the highest mean score (first on
      ties). Then walk: its members in permutation order, followed by the permutation after that
      batch, followed by the permutation before it (wrapping round); members that conflict are
      skipped and so replaced by the next non-conflicting candidates of that walk. Without
      conflicts the result is exactly the best batch.
    * random: walk the permutation `default_rng(seed).permutation(N)` of the eligible candidates
      from the start, with the same skipping; without conflicts, its first B.

    With fewer than `budget` eligible candidates, all of them that the overlap and per-slide rules
    allow are returned (logged). Raises ValueError for budget <= 0, an unknown strategy,
    batches < 1 or max_per_slide < 1. Deterministic for a given seed.
    """
    check_selection(strategy)
    if budget <= 0:
        raise ValueError(f"selection budget must be a positive number of patches, got {budget}")
    if batches is not None and batches < 1:
        raise ValueError(f"batches must be >= 1 (or None for ⌊N/B⌋), got {batches}")
    if max_per_slide is not None and max_per_slide < 1:
        raise ValueError(f"max_per_slide must be >= 1 (or None for no cap), got {max_per_slide}")
    valid = np.isfinite(c.score)
    n = int(valid.sum())
    if n < budget:
        log.info("only %d candidates with a score (budget %d): selecting all that do not overlap", n, budget)
    if n == 0:
        return np.zeros(0, np.int64)
    chosen = SELECTIONS[strategy](c, valid, budget, seed, batches, max_per_slide)
    if chosen.size < min(budget, n):
        log.info("%s: %d of %d patches selected; overlaps or the per-slide cap left no more", strategy, chosen.size,
                 budget)
    return chosen
