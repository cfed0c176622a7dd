"""Uncertainty over a whole slide: tissue patches stream from the reader threads (which run ahead)
as tiles with a margin of context, through an uncertainty method in batches; overlapping tiles
are blended, so each patch's per-pixel measures have no seams at its borders. `slide_uncertainty`
turns the stream into a patch table and slide maps kept at a coarse `map_mpp` (at most
MAX_MAP_PX a side), so memory is bounded by a thumbnail-sized grid and about two rows of tiles,
not by the slide."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ugafl.common.masks import MaskImage
from ugafl.common.model import ModelConfig, to_input
from ugafl.common.slide import Slide
from ugafl.common.streaming import iter_patch_batches
from ugafl.common.tiling import PatchLocation, patch_grid
from ugafl.common.tissue import TissueMask, detect_tissue
from ugafl.common.uncertainty_measures import compute_measures, patch_scores
from ugafl.common.uncertainty_methods import UncertaintyMethod


@dataclass
class BatchUncertainty:
    """One batch of patches at the model's mpp."""

    locations: list[PatchLocation]
    prob: np.ndarray  # (B, H, W) mean tumour probability p̄
    maps: dict[str, np.ndarray]  # measure -> (B, H, W): entropy, mutual_information, uga[, variance]
    tissue: np.ndarray  # (B, H, W) bool


@dataclass
class Timing:
    """Where the time went: model compute vs the whole (reading, waiting, bookkeeping)."""

    compute_s: float = 0.0
    wall_s: float = 0.0
    patches: int = 0


# Each patch is predicted as a tile with this much context on every side (px at the model's mpp);
# where neighbouring tiles overlap (2 x MARGIN_PX across every patch border) their outputs are
# blended with linear weights that sum to 1, so the maps have no seams at patch borders. Cost:
# ((p + 2m) / p)^2 forward passes per patch: 1.27 at 256 px, 1.13 at 512 px.
MARGIN_PX = 16
MAX_MAP_PX = 4096  # the slide maps' longest side, px


def margin_for(patch_px: int) -> int:
    """The context margin for patches of `patch_px` (px at the model's mpp): MARGIN_PX, or a quarter
    of a tiny patch."""
    return max(0, min(MARGIN_PX, patch_px // 4))


def ramp(size: int, margin: int) -> np.ndarray:
    """1-D blending weights of a tile of `size` px whose first and last 2 x `margin` px overlap
    its neighbours: rising across the first 2m px, 1 in the middle, falling across the last 2m;
    a tile's weight and its neighbour's sum to 1 at every pixel they share."""
    u = np.arange(size, dtype=np.float32) + 0.5
    if margin == 0:
        return np.ones(size, np.float32)
    return np.clip(np.minimum(u, size - u) / (2 * margin), 0.0, 1.0).astype(np.float32)


def iter_uncertainty(method: UncertaintyMethod, slide: Slide, patches: list[PatchLocation], tissue: TissueMask,
                     batch_size: int = 16, device: torch.device | str = "cpu", workers: int = 2,
                     timing: Timing | None = None, patch_px: int | None = None,
                     margin_px: int | None = None) -> Iterator[BatchUncertainty]:
    """Per-pixel uncertainty of every patch (`patch_px` px square at the model's mpp; default the
    model's patch size), in `patches` order, in batches of whatever is final.

    Each patch is predicted as a tile with `margin_px` px of context on every side (default
    `margin_for(patch_px)`); a patch's maps are the weighted mean of its own tile and of the
    tiles of its neighbours in the list that overlap it (weights `ramp`), so they are final once
    its last neighbour is computed. Patches on one grid of stride `patch_px` blend; a patch with
    no neighbour in the list is its own tile's centre. Memory: about two grid rows of tiles."""
    cfg: ModelConfig = method.cfg
    p = patch_px or cfg.patch_size
    m = margin_for(p) if margin_px is None else margin_px
    t = p + 2 * m
    scale = cfg.mpp / slide.mpp  # level-0 px per model px
    tissue_image = MaskImage(tissue.mask, tissue.mpp)
    started = time.perf_counter()
    cells = [(round(loc.y / (p * scale)), round(loc.x / (p * scale))) for loc in patches]
    index = {cell: i for i, cell in enumerate(cells)}
    neighbours = [[index[(r + dr, c + dc)] for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (r + dr, c + dc) in index]
                  for r, c in cells]
    ready_after = [max(n) for n in neighbours]  # the last tile a patch's maps need
    first_needed = np.minimum.accumulate([min(n) for n in neighbours][::-1])[::-1] if patches else []
    m0, t0 = m * scale, round(t * scale)
    tiles = [PatchLocation(round(loc.x - m0), round(loc.y - m0), t0, t0, loc.tissue_fraction) for loc in patches]
    weight = ramp(t, m)[:, None] * ramp(t, m)[None, :]
    held: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # tile -> p̄ and maps
    done = 0  # tiles computed
    emitted = 0  # patches yielded
    for batch, _ in iter_patch_batches(slide, tiles, cfg.mpp, t, batch_size=batch_size, workers=workers):
        x = to_input(batch, device)
        t_start = time.perf_counter()
        out = method(x)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if timing is not None:  # pure model compute: the method's forward passes only
            timing.compute_s += time.perf_counter() - t_start
            timing.patches += len(batch)
        measures = compute_measures(out.probs)
        prob = out.probs.mean(dim=0)[:, 1].cpu().numpy()
        maps = {k: v.cpu().numpy() for k, v in measures.items()}
        if out.variance is not None:
            maps["variance"] = out.variance.cpu().numpy()
        for k in range(len(batch)):
            held[done + k] = (prob[k], {name: v[k] for name, v in maps.items()})
        done += len(batch)
        final = emitted
        while final < len(patches) and ready_after[final] < done:
            final += 1
        if final > emitted:
            yield _blend(range(emitted, final), cells, neighbours, held, weight, p, m, slide, tissue_image, patches, cfg)
            emitted = final
            for j in [j for j in held if j < (first_needed[emitted] if emitted < len(patches) else done)]:
                del held[j]
    if timing is not None:
        timing.wall_s += time.perf_counter() - started


def _blend(which: range, cells, neighbours, held, weight: np.ndarray, p: int, m: int, slide: Slide, tissue_image: MaskImage,
           patches: list[PatchLocation], cfg: ModelConfig) -> BatchUncertainty:
    """The final maps of patches `which`: over each patch's box, the weighted mean of the tiles
    that cover it, written as its own tile's values plus the weighted mean of the others'
    differences from them (so that where every tile agrees, the result is exactly that value)."""
    names = list(held[next(iter(held))][1])
    prob = np.empty((len(which), p, p), np.float32)
    maps = {name: np.empty((len(which), p, p), np.float32) for name in names}
    core = (slice(m, m + p), slice(m, m + p))
    for k, i in enumerate(which):
        r, c = cells[i]
        own_prob, own_maps = held[i]
        layers = {"": (own_prob[core], prob[k])} | {name: (own_maps[name][core], maps[name][k]) for name in names}
        total = weight[core].copy()
        delta = {key: np.zeros((p, p), np.float32) for key in layers}
        for j in neighbours[i]:
            if j == i:
                continue
            rj, cj = cells[j]
            # The patch's box in tile j's pixels: tile j starts m px before patch j's corner.
            y0, x0 = (r - rj) * p + m, (c - cj) * p + m
            ys, xs = slice(max(y0, 0), min(y0 + p, p + 2 * m)), slice(max(x0, 0), min(x0 + p, p + 2 * m))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            into = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
            w = weight[ys, xs]
            total[into] += w
            tile_prob, tile_maps = held[j]
            for key, (own, _) in layers.items():
                values = tile_prob if key == "" else tile_maps[key]
                delta[key][into] += w * (values[ys, xs] - own[into])
        for key, (own, out) in layers.items():
            np.add(own, delta[key] / total, out=out)
    locations = [patches[i] for i in which]
    on_tissue = np.stack([_fit(tissue_image.region((loc.x, loc.y), (loc.width, loc.height), slide.mpp, cfg.mpp), p) >= 0.5
                          for loc in locations])
    return BatchUncertainty(locations, prob, maps, on_tissue)


def _fit(array: np.ndarray, size: int) -> np.ndarray:
    out = array[:size, :size]
    if out.shape != (size, size):
        out = np.pad(out, ((0, size - out.shape[0]), (0, size - out.shape[1])))
    return out


@dataclass
class SlideUncertainty:
    """Patch table and coarse slide maps of one slide."""

    method: str
    mpp: float  # the model's working resolution, µm/px
    map_mpp: float  # resolution of `maps` and `prediction`, µm/px (same origin as the slide)
    patches: list[PatchLocation]
    scores: dict[str, np.ndarray]  # score column (common.patch_scoring.score_column) -> (N,)
    tumour_fraction: np.ndarray  # (N,) share of the patch's tissue predicted tumour
    maps: dict[str, np.ndarray]  # measure -> (H, W) at map_mpp; NaN where no patch was computed
    prediction: np.ndarray  # (H, W) bool at map_mpp
    tissue: TissueMask
    timing: Timing = field(default_factory=Timing)

    def rows(self) -> list[dict]:
        """The patch table: level-0 location and size, mpp, tissue, scores (one dict per patch)."""
        out = []
        for i, loc in enumerate(self.patches):
            row = {"x": loc.x, "y": loc.y, "width": loc.width, "height": loc.height, "mpp": self.mpp,
                   "tissue_fraction": round(loc.tissue_fraction, 4), "tumour_fraction": round(float(self.tumour_fraction[i]), 4)}
            row.update({k: (None if np.isnan(v[i]) else round(float(v[i]), 6)) for k, v in self.scores.items()})
            out.append(row)
        return out


def slide_uncertainty(method: UncertaintyMethod, slide: Slide, tissue: TissueMask | None = None, batch_size: int = 16,
                      map_mpp: float = 8.0, min_tissue: float = 0.1, device: torch.device | str = "cpu",
                      progress: bool = False, patch_px: int | None = None, margin_px: int | None = None,
                      sinks: tuple[Callable[[BatchUncertainty], None], ...] = ()) -> SlideUncertainty:
    """Every tissue patch of `slide` (non-overlapping grid of `patch_px` px squares at the model's
    mpp; default the model's patch size) scored by `method`, each predicted with `margin_px` of
    context (see `iter_uncertainty`); each batch of final patches also goes to every one of
    `sinks` (e.g. `common.overlay.OverlayWriter.add`)."""
    cfg = method.cfg
    tissue = tissue if tissue is not None else detect_tissue(slide)
    p = patch_px or cfg.patch_size
    patches = patch_grid(slide, cfg.mpp, p, tissue=tissue, min_tissue=min_tissue)
    w0, h0 = slide.dimensions
    # Coarser maps for a larger slide: the maps are thumbnails, at most MAX_MAP_PX a side.
    map_mpp = max(map_mpp, max(w0, h0) * slide.mpp / MAX_MAP_PX)
    factor = max(1, round(map_mpp / cfg.mpp))  # model pixels per map pixel
    map_mpp = cfg.mpp * factor
    shape = (max(1, round(h0 * slide.mpp / map_mpp)), max(1, round(w0 * slide.mpp / map_mpp)))
    q = p // factor
    maps: dict[str, np.ndarray] = {}
    prediction = np.zeros((shape[0] + q, shape[1] + q), bool)
    scores: dict[str, list[np.ndarray]] = {}
    fractions: list[np.ndarray] = []
    timing = Timing()
    bar = tqdm(total=len(patches), desc=f"{method.name} {slide.path.name}", unit="patch", disable=not progress, leave=False)
    for res in iter_uncertainty(method, slide, patches, tissue, batch_size, device, timing=timing, patch_px=p, margin_px=margin_px):
        for sink in sinks:
            sink(res)
        tumour = (res.prob >= 0.5) & res.tissue
        for name, values in patch_scores(res.maps, res.tissue, "all", tumour).items():
            scores.setdefault(name, []).append(values)
        fractions.append(tumour.sum(axis=(1, 2)) / np.maximum(res.tissue.sum(axis=(1, 2)), 1))
        # Tissue-weighted block means; NaN where a block has no tissue (the heatmap shows tissue only).
        weight = F.avg_pool2d(torch.from_numpy(res.tissue[:, None].astype(np.float32)), factor)[:, 0].numpy()
        pooled = {k: np.divide(F.avg_pool2d(torch.from_numpy((v * res.tissue)[:, None].astype(np.float32)), factor)[:, 0].numpy(),
                               weight, out=np.full_like(weight, np.nan), where=weight > 0)
                  for k, v in res.maps.items()}
        pooled_pred = F.avg_pool2d(torch.from_numpy(tumour[:, None].astype(np.float32)), factor)[:, 0].numpy() >= 0.5
        for i, loc in enumerate(res.locations):
            y, x = round(loc.y * slide.mpp / map_mpp), round(loc.x * slide.mpp / map_mpp)
            if y < 0 or x < 0:
                continue
            for name, grid in pooled.items():
                canvas = maps.setdefault(name, np.full((shape[0] + q, shape[1] + q), np.nan, np.float32))
                canvas[y : y + q, x : x + q] = grid[i]
            prediction[y : y + q, x : x + q] = pooled_pred[i]
        bar.update(len(res.locations))
    bar.close()
    return SlideUncertainty(
        method=method.name, mpp=cfg.mpp, map_mpp=map_mpp, patches=patches,
        scores={k: np.concatenate(v) for k, v in scores.items()},
        tumour_fraction=np.concatenate(fractions) if fractions else np.zeros(0),
        maps={k: v[: shape[0], : shape[1]] for k, v in maps.items()}, prediction=prediction[: shape[0], : shape[1]],
        tissue=tissue, timing=timing,
    )
