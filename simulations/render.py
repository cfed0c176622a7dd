"""Composes one H&E section at the render resolution: anatomy and cells become hematoxylin and
eosin densities, fixation artefacts and section thickness act on them, Beer-Lambert makes colour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ugafl.simulations.centres import GROWTH_PATTERNS, CentreProfile
from ugafl.simulations.fields import smooth_field
from ugafl.simulations.node_layout import NodeLayout, make_layout
from ugafl.simulations.nuclei import nucleus_kernel, sample_centres, stamp, stamp_population
from ugafl.simulations.tumour import Tumour, make_tumour

NODE_LENGTH_UM = {"negative": (1600, 2800), "itc": (1600, 2800), "micro": (2000, 3000), "macro": (3200, 3800)}


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Bounding box of a non-empty bool mask, padded and clipped to the array."""
    ys, xs = np.nonzero(mask)
    return (slice(max(ys.min() - pad, 0), ys.max() + pad + 1), slice(max(xs.min() - pad, 0), xs.max() + pad + 1))


@dataclass
class Section:
    rgb: np.ndarray  # float32 (H, W, 3), 0-255, before the scanner
    tissue: np.ndarray  # bool
    tumour: Tumour


def _cells(rng: np.random.Generator, layout: NodeLayout, tumour: Tumour, centre: CentreProfile, um: float):
    """Hematoxylin (nuclei) and eosin (cytoplasm, stroma) density fields, in 0..~1.5 units."""
    shape = layout.node.shape
    hem = np.zeros(shape, np.float32)
    eos = np.zeros(shape, np.float32)
    pat = tumour.pattern
    solid, glandular, discohesive = (pat == GROWTH_PATTERNS.index(p) for p in GROWTH_PATTERNS)
    px_area = um * um
    thick = centre.thickness

    # Lymphocytes: small, round, dark; fewer inside tumour, depending on its pattern.
    lymph = layout.lymphoid.copy()
    lymph[solid] *= 0.05
    lymph[glandular] *= 0.12
    lymph[discohesive] *= 0.45
    ys, xs = sample_centres(rng, lymph * thick * px_area / 55.0)
    stamp_population(rng, hem, ys, xs, (3.0 / um, 3.8 / um), aspect=(0.85, 1.0), intensity=(0.85, 1.1))
    # Germinal-centre blasts and sinus histiocytes: larger, paler, some vesicular.
    ys, xs = sample_centres(rng, (layout.germinal & ~tumour.mask) * thick * px_area / 160.0)
    stamp_population(rng, hem, ys, xs, (4.2 / um, 5.5 / um), vesicular=0.5, intensity=(0.55, 0.8))
    ys, xs = sample_centres(rng, (layout.sinus & ~tumour.mask) * thick * px_area / 450.0)
    stamp_population(rng, hem, ys, xs, (4.0 / um, 5.0 / um), vesicular=0.3, intensity=(0.4, 0.6))
    stamp_population(rng, eos, ys, xs, (7.0 / um, 9.0 / um), intensity=(0.25, 0.35))
    # Fibroblasts in stroma: elongated.
    fibro = (layout.stroma | (layout.fat_walls & (rng.random(shape) < 0.05))) & ~tumour.mask
    ys, xs = sample_centres(rng, fibro * thick * px_area / 500.0)
    stamp_population(rng, hem, ys, xs, (5.0 / um, 6.5 / um), aspect=(0.3, 0.4), intensity=(0.6, 0.9))

    eos += 0.30 * layout.node + 0.55 * layout.stroma + 0.15 * layout.sinus + 0.6 * layout.fat_walls

    if tumour.mask.any():
        r_lo, r_hi = centre.tumour_nucleus_um
        # Solid nests: sheets of large pleomorphic vesicular nuclei with eosinophilic cytoplasm,
        # split by thin fibrous septa.
        septa = solid & (np.abs(smooth_field(rng, shape, 140 / um)) < 0.04)
        ys, xs = sample_centres(rng, (solid & ~septa) * thick * px_area / 175.0)
        stamp_population(rng, hem, ys, xs, (r_lo / um, r_hi / um), aspect=(0.6, 1.0), vesicular=0.75, intensity=(0.6, 1.0))
        stamp_population(rng, eos, ys, xs, (1.7 * r_lo / um, 1.7 * r_hi / um), intensity=(0.22, 0.32))
        eos += 0.5 * septa
        # Glands: lumens lined by one to two layers of tumour cells, in desmoplastic stroma.
        if glandular.any():
            ly, lx = sample_centres(rng, glandular * px_area / 9000.0)
            lumen_canvas = np.zeros(shape, np.float32)
            for radius in (14, 22, 32):
                part = rng.random(len(ly)) < 1 / 3
                stamp(lumen_canvas, ly[part], lx[part], nucleus_kernel(radius / um, 0.7, int(rng.integers(0, 4)) * 45, False))
            lumen = (lumen_canvas > 0.5) & glandular
            box = _bbox(glandular, pad=int(40 / um))
            dist = np.full(shape, np.inf, np.float32)
            dist[box] = ndimage.distance_transform_edt(~lumen[box]) * um
            lining = glandular & ~lumen & (dist < 2.6 * r_hi)
            ys, xs = sample_centres(rng, lining * thick * px_area / 120.0)
            stamp_population(rng, hem, ys, xs, (r_lo / um, r_hi / um), aspect=(0.5, 0.8), vesicular=0.6, intensity=(0.6, 1.0))
            stamp_population(rng, eos, ys, xs, (1.5 * r_lo / um, 1.5 * r_hi / um), intensity=(0.2, 0.3))
            eos += 0.45 * (glandular & ~lumen & ~lining)
            eos[lumen] = 0.0
            hem[lumen] = 0.0
            tumour_holes = lumen
        else:
            tumour_holes = np.zeros(shape, bool)
        # Discohesive: single tumour cells scattered among lymphocytes, with a little cytoplasm.
        ys, xs = sample_centres(rng, discohesive * thick * px_area / 420.0)
        stamp_population(rng, hem, ys, xs, (0.85 * r_lo / um, 0.9 * r_hi / um), aspect=(0.7, 1.0), vesicular=0.55, intensity=(0.55, 0.9))
        stamp_population(rng, eos, ys, xs, (1.5 * r_lo / um, 1.5 * r_hi / um), intensity=(0.15, 0.25))
        eos += 0.1 * discohesive
    else:
        tumour_holes = np.zeros(shape, bool)
    return hem, eos, tumour_holes


def _artefacts(rng: np.random.Generator, hem: np.ndarray, eos: np.ndarray, layout: NodeLayout, tumour: Tumour, centre: CentreProfile, um: float):
    """Fixation and handling artefacts: smudged chromatin, crushed lymphocytes, retraction clefts."""
    shape = hem.shape
    if centre.smudge_um > 0:
        hem = ndimage.gaussian_filter(hem, centre.smudge_um / um)
    if centre.crush > 0:
        from scipy.stats import norm as normal

        crush = layout.node & (smooth_field(rng, shape, 250 / um) > normal.ppf(1 - centre.crush))
        if crush.any():
            streaked = ndimage.gaussian_filter(hem, (1.0 / um, 7.0 / um)) * 1.4
            hem = np.where(crush, streaked, hem)
    clefts = np.zeros(shape, bool)
    if centre.retraction > 0 and tumour.mask.any():
        from scipy.stats import norm as normal

        box = _bbox(tumour.mask, pad=int(20 / um))
        outside = np.zeros(shape, np.float32)
        outside[box] = ndimage.distance_transform_edt(~tumour.mask[box]) * um
        band = (outside > 0) & (outside < rng.uniform(3.0, 7.0))
        clefts = band & (smooth_field(rng, shape, 80 / um) > normal.ppf(1 - centre.retraction))
    return hem, eos, clefts


def render_section(rng: np.random.Generator, centre: CentreProfile, label_type: str, um_per_px: float = 1.0) -> Section:
    """One H&E section of a lymph node of `label_type` as `centre` stains and cuts it."""
    length = rng.uniform(*NODE_LENGTH_UM[label_type])
    layout = make_layout(rng, length, um_per_px)
    tumour = make_tumour(rng, layout, label_type, centre, um_per_px)
    hem, eos, lumens = _cells(rng, layout, tumour, centre, um_per_px)
    hem, eos, clefts = _artefacts(rng, hem, eos, layout, tumour, centre, um_per_px)
    glass = ~layout.tissue | lumens | clefts
    hem[glass] = 0.0
    eos[glass] = 0.0
    eos[layout.fat & ~layout.fat_walls] = 0.0

    # Beer-Lambert: OD = thickness * (H * h_vec * h_strength + E * e_vec * e_strength).
    stains = centre.stain_matrix() * (1.0 + rng.normal(0, 0.03, (2, 3))).astype(np.float32)
    strength = np.array([centre.hematoxylin_strength, centre.eosin_strength], np.float32) * rng.uniform(0.9, 1.1, 2).astype(np.float32)
    od = centre.thickness * (
        np.minimum(hem, 1.6)[..., None] * (stains[0] * strength[0]) + np.minimum(eos, 1.5)[..., None] * (stains[1] * strength[1])
    )
    background = np.array(centre.background, np.float32) + rng.normal(0, 1.5, 3).astype(np.float32)
    rgb = background * np.exp(-od.astype(np.float32))
    return Section(rgb=rgb.astype(np.float32), tissue=layout.tissue, tumour=tumour)
