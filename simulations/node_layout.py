"""Lymph-node anatomy on glass, at the render resolution (1 µm/px): node outline, capsule,
subcapsular sinus, cortex with follicles, medulla with cords and sinuses, trabeculae, perinodal
and hilar fat, and tears/holes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ugafl.simulations.fields import distance_inside, ellipse_box, ellipse_norm, smooth_field


@dataclass
class NodeLayout:
    """Region maps of one section. Shapes are (rows, cols) of the render grid."""

    tissue: np.ndarray  # bool: anything on the glass that is not background
    node: np.ndarray  # bool: the lymph node proper (no perinodal fat)
    depth: np.ndarray  # float32: distance into the node, µm
    lymphoid: np.ndarray  # float32 0..1: lymphocyte density weight
    germinal: np.ndarray  # bool: germinal centres
    sinus: np.ndarray  # bool: sinuses (histiocytes, pale)
    stroma: np.ndarray  # bool: capsule and trabeculae (fibrous, pink)
    fat: np.ndarray  # bool: adipose tissue
    fat_walls: np.ndarray  # bool: adipocyte membranes inside `fat`
    holes: np.ndarray  # bool: tears and holes inside the tissue


def make_layout(rng: np.random.Generator, node_length_um: float, um_per_px: float = 1.0) -> NodeLayout:
    """A section of one lymph node whose long axis is about `node_length_um`, at `um_per_px` µm/px."""
    a = node_length_um / 2 / um_per_px
    b = a * rng.uniform(0.6, 0.8)
    margin = 0.2 * a + 120 / um_per_px
    shape = (int(2 * b + 2 * margin), int(2 * a + 2 * margin))
    centre = (shape[1] / 2, shape[0] / 2)
    angle = rng.uniform(-0.3, 0.3)
    r = ellipse_norm(shape, centre, (a, b), angle)
    r_wobbly = r + 0.06 * smooth_field(rng, shape, 0.5 * b)
    node, fat, depth = _node_and_fat(rng, r_wobbly, centre, (a, b), um_per_px)

    capsule = node & (depth < rng.uniform(15, 28))
    subcapsular = node & ~capsule & (depth < 60)
    cortex_depth = rng.uniform(0.25, 0.4) * b * um_per_px
    cortex = node & ~capsule & ~subcapsular & (depth < cortex_depth + 80 * smooth_field(rng, shape, 150 / um_per_px))
    germinal, mantle = _follicles(rng, node, cortex, node_length_um, um_per_px)

    medulla = node & ~capsule & ~subcapsular & ~cortex
    cords = smooth_field(rng, shape, 70 / um_per_px) > -0.1
    sinus = subcapsular | (medulla & ~cords & ~mantle)
    trabeculae = node & (np.abs(smooth_field(rng, shape, 400 / um_per_px)) < 0.035) & (depth > 40)
    stroma = capsule | trabeculae

    lymphoid = np.zeros(shape, np.float32)
    lymphoid[cortex] = 1.0
    lymphoid[medulla & cords] = 0.8
    lymphoid[sinus] = 0.2
    lymphoid[mantle] = 1.15
    lymphoid[germinal] = 0.45
    lymphoid[stroma] = 0.05
    lymphoid[~node] = 0.0

    fat_walls = _fat_walls(rng, fat, um_per_px)
    holes = _holes(rng, node, depth, centre, (a, b), um_per_px)
    tissue = (node | fat) & ~holes
    return NodeLayout(tissue=tissue, node=node & ~holes, depth=depth, lymphoid=lymphoid, germinal=germinal & ~holes,
                      sinus=sinus & ~holes, stroma=stroma & ~holes, fat=fat, fat_walls=fat_walls, holes=holes)


def _node_and_fat(rng: np.random.Generator, r_wobbly: np.ndarray, centre: tuple[float, float],
                  axes: tuple[float, float], um_per_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node bool, fat bool, depth into the node before the fat was cut out, µm) from the node's
    wobbly ellipse norm; `centre` (x, y) and semi-axes (a, b) in pixels."""
    a, b = axes
    shape = r_wobbly.shape
    node = r_wobbly < 1.0
    # Perinodal fat: a rim on part of the circumference.
    rim_side = smooth_field(rng, shape, a) > 0.2
    fat_out = (r_wobbly >= 1.0) & (r_wobbly < 1.0 + rng.uniform(0.08, 0.18)) & rim_side
    depth = distance_inside(node) * um_per_px

    # Hilum: a wedge of fat entering the node from one side.
    hilum_angle = rng.uniform(0, 2 * np.pi)
    hx, hy = centre[0] + 0.9 * a * np.cos(hilum_angle), centre[1] + 0.9 * b * np.sin(hilum_angle)
    box, hn = ellipse_box(shape, (hx, hy), (0.25 * b, 0.18 * b), hilum_angle)
    hilum = np.zeros(shape, bool)
    hilum[box] = hn + 0.2 * smooth_field(rng, hn.shape, 0.1 * b) < 1
    fat = (fat_out | (hilum & node)) & ~(node & (depth < 20))
    node &= ~fat
    return node, fat, depth


def _follicles(rng: np.random.Generator, node: np.ndarray, cortex: np.ndarray, node_length_um: float,
               um_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(germinal centres, mantles), bool: follicles in the cortex, a dense mantle ring around a
    paler germinal centre."""
    shape = node.shape
    germinal = np.zeros(shape, bool)
    mantle = np.zeros(shape, bool)
    n_follicles = int(rng.integers(3, 9) * node_length_um / 3000)
    ys, xs = np.nonzero(cortex[::16, ::16])
    for i in rng.choice(len(ys), size=min(n_follicles, len(ys)), replace=False) if len(ys) else []:
        fr = rng.uniform(90, 220) / um_per_px
        fc = (xs[i] * 16.0, ys[i] * 16.0)
        box, fn = ellipse_box(shape, fc, (fr, fr * rng.uniform(0.7, 1.0)), rng.uniform(0, np.pi))
        mantle[box] |= (fn < 1.0) & node[box]
        germinal[box] |= (fn < 0.65) & node[box]
    return germinal, mantle


def _fat_walls(rng: np.random.Generator, fat: np.ndarray, um_per_px: float) -> np.ndarray:
    """Adipocyte membranes inside `fat`, bool: Voronoi cells about 70 µm across, walls where
    neighbours differ."""
    shape = fat.shape
    fat_walls = np.zeros(shape, bool)
    if fat.any():
        from scipy import ndimage

        step = 3
        small = fat[::step, ::step]
        seeds = np.zeros(small.shape, bool)
        seeds[rng.random(small.shape) < (step * um_per_px) ** 2 / 70.0**2] = True
        _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
        label = (iy * small.shape[1] + ix).astype(np.int64)
        label = np.repeat(np.repeat(label, step, 0), step, 1)[: shape[0], : shape[1]]
        edge = np.zeros(shape, bool)
        edge[:, 1:] |= label[:, 1:] != label[:, :-1]
        edge[1:, :] |= label[1:, :] != label[:-1, :]
        fat_walls = ndimage.binary_dilation(edge, iterations=1) & fat
    return fat_walls


def _holes(rng: np.random.Generator, node: np.ndarray, depth: np.ndarray, centre: tuple[float, float],
           axes: tuple[float, float], um_per_px: float) -> np.ndarray:
    """Tears and holes inside the node, bool: a few round holes away from its edge, and sometimes
    a thin crack through it; `centre` (x, y) and semi-axes (a, b) of the node in pixels."""
    shape = node.shape
    holes = np.zeros(shape, bool)
    for _ in range(int(rng.integers(0, 3))):
        ys, xs = np.nonzero(node[::32, ::32] & (depth[::32, ::32] > 150))
        if len(ys) == 0:
            break
        i = rng.integers(len(ys))
        hr = rng.uniform(60, 160) / um_per_px
        box, hn = ellipse_box(shape, (xs[i] * 32.0, ys[i] * 32.0), (hr, hr * rng.uniform(0.5, 1.0)), rng.uniform(0, np.pi))
        holes[box] |= hn + 0.15 * smooth_field(rng, hn.shape, hr) < 1
    # A tear: a thin crack through the tissue.
    if rng.random() < 0.5:
        tear_line = np.abs(smooth_field(rng, shape, 600 / um_per_px)) < 0.012
        tear_zone = ellipse_norm(shape, centre, (axes[0] * 0.5, axes[1] * 0.5), rng.uniform(0, np.pi)) < 1
        holes |= tear_line & tear_zone
    return holes & node
