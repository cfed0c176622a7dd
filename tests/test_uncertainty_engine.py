"""Uncertainty methods (mc_dropout, tta, ensemble, edue) on tiny untrained UNets, and the slide
engine on the synthetic TIFF: patch-table coordinates that lead back to the same pixels and
scores, tissue-only patch means, bounded memory and timing."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.errors import CheckpointError, ConfigError
from ugafl.common.model import ModelConfig, build_model, to_input
from ugafl.common.slide import open_slide
from ugafl.common.tiling import patch_grid
from ugafl.common.tissue import TissueMask
from ugafl.common.uncertainty_engine import BatchUncertainty, iter_uncertainty, margin_for, ramp, slide_uncertainty
from ugafl.common.uncertainty_measures import MEASURES, compute_measures, patch_scores
from ugafl.common.uncertainty_methods import (
    METHODS,
    Edue,
    Ensemble,
    McDropout,
    PlainForward,
    Tta,
    load_method,
)

CFG = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0)
CFG_EDUE = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0, disagreement_head=True)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny nets run fastest single-threaded; with a busy machine torch's OpenMP team spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed: int, cfg: ModelConfig = CFG) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """Three patches in [0, 1] with some structure (a smooth ramp plus noise)."""
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0, 1, 64)
    base = (ramp[None, :] * ramp[:, None])[None, None].expand(3, 3, 64, 64)
    return (0.6 * base + 0.4 * torch.rand(3, 3, 64, 64, generator=g)).contiguous()


# --- methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, members",
    [
        (lambda: McDropout(tiny(0), CFG, passes=5), 5),
        (lambda: Tta(tiny(0), CFG, passes=6), 6),
        (lambda: Ensemble([tiny(0), tiny(1), tiny(2)], CFG), 3),
        (lambda: Edue(tiny(0, CFG_EDUE), CFG_EDUE), 1),
        (lambda: PlainForward(tiny(0), CFG), 1),
    ],
    ids=["mc_dropout", "tta", "ensemble", "edue", "plain"],
)
def test_method_output_is_members_by_batch_by_class_by_pixel(make, members, x):
    method = make()
    out = method(x)
    assert out.probs.shape == (members, 3, 2, 64, 64)
    assert out.probs.dtype == torch.float32
    torch.testing.assert_close(out.probs.sum(dim=2), torch.ones(members, 3, 64, 64), atol=1e-5, rtol=0)
    assert method.passes == members
    if method.name == "edue":
        assert out.variance is not None and out.variance.shape == (3, 64, 64)
    else:
        assert out.variance is None


def test_mc_dropout_members_differ_while_norms_stay_in_eval(x):
    model = tiny(0)
    model.train()  # whatever mode it arrives in
    method = McDropout(model, CFG, passes=4, max_batch=5)  # 12 stacked patches in chunks of 5
    own = method.model  # McDropout works on a private copy...
    assert own is not model
    assert all(m.training for m in model.modules())  # ...so the caller's model is left as it arrived
    from ugafl.common.uncertainty_methods import _PassMasks

    masks = [m for m in own.modules() if isinstance(m, _PassMasks)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    norms = [m for m in own.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))]
    assert norms and len(masks) == len(dropouts) > 0  # every dropout layer became a mask layer
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in own.modules())
    assert not any(m.training for m in own.modules())  # the norms (and all else) in eval
    probs = method(x).probs
    for i, j in itertools.combinations(range(4), 2):
        assert (probs[i] - probs[j]).abs().max() > 1e-3, f"members {i} and {j} are identical: dropout is off"
    # The members still scatter around the deterministic prediction, not somewhere else.
    plain = torch.softmax(tiny(0).eval()(x)[:, :2], dim=1)
    assert (probs.mean(0) - plain).abs().mean() < 0.1


def test_mc_dropout_refuses_a_model_without_dropout():
    cfg = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0, dropout=0.0)
    with pytest.raises(ConfigError, match="dropout"):
        McDropout(build_model(cfg), cfg)


def test_mc_dropout_is_reproducible_for_a_seed_and_leaves_the_global_rng_alone(x):
    a, b = McDropout(tiny(0), CFG, passes=3, seed=7), McDropout(tiny(0), CFG, passes=3, seed=7)
    other = McDropout(tiny(0), CFG, passes=3, seed=8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = a(x).probs
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    torch.manual_seed(456)  # unrelated global RNG state between the runs
    second = b(x).probs
    assert torch.equal(first, second)
    assert not torch.equal(first, other(x).probs)
    # The T masks are drawn once and shared by every patch: a patch's members do not depend on
    # the call, its batch or its place in it.
    assert torch.equal(a(x).probs, first)
    assert torch.allclose(a(x[1:]).probs, first[:, 1:], atol=1e-6)
    assert torch.allclose(a(x[2:]).probs, first[:, 2:], atol=1e-6)


def test_tta_identity_member_is_the_plain_forward(x):
    model = tiny(0)
    out = Tta(model, CFG, passes=8, max_batch=7)(x)  # 24 stacked patches in uneven chunks
    plain = PlainForward(tiny(0), CFG)(x).probs[0]
    torch.testing.assert_close(out.probs[0], plain, atol=1e-6, rtol=0)
    # The other members are real transforms (an untrained net is not rotation-invariant).
    assert (out.probs[1] - out.probs[0]).abs().max() > 1e-3


def test_tta_over_all_eight_symmetries_is_flip_equivariant(x):
    """Flipping the input permutes the dihedral group: the members of tta(flip x) are the
    flipped members of tta(x) in another order, so the mean probability commutes with flipping."""
    method = Tta(tiny(0), CFG, passes=8)
    flip = lambda t: torch.flip(t, dims=(-1,))  # noqa: E731
    members = method(x).probs
    flipped_members = method(flip(x)).probs
    torch.testing.assert_close(flipped_members.mean(0), flip(members.mean(0)), atol=1e-5, rtol=0)
    unmatched = set(range(8))
    for m in range(8):
        target = flip(members[m])
        match = [k for k in unmatched if (flipped_members[k] - target).abs().max() < 1e-5]
        assert match, f"member {m} of tta(x), flipped, is no member of tta(flip x)"
        unmatched.remove(match[0])


def test_tta_refuses_passes_outside_the_eight_symmetries():
    for passes in (1, 9):
        with pytest.raises(ConfigError, match="tta passes"):
            Tta(tiny(0), CFG, passes=passes)


@pytest.mark.parametrize("max_batch", [64, 4])  # 4 // 3 members: one patch per vmapped chunk
def test_ensemble_member_m_is_model_m_own_softmax(max_batch, x):
    models = [tiny(s) for s in (0, 1, 2)]
    out = Ensemble(models, CFG, max_batch=max_batch)(x)
    for m, seed in enumerate((0, 1, 2)):
        own = torch.softmax(tiny(seed).eval()(x)[:, :2], dim=1)
        torch.testing.assert_close(out.probs[m], own, atol=1e-5, rtol=0)
    assert (out.probs[0] - out.probs[1]).abs().max() > 1e-3


def test_ensemble_refuses_a_single_member():
    with pytest.raises(ConfigError, match="at least 2"):
        Ensemble([tiny(0)], CFG)


def test_edue_variance_is_a_bernoulli_variance_and_probs_are_the_plain_softmax(x):
    model = tiny(3, CFG_EDUE)
    out = Edue(model, CFG_EDUE, max_batch=2)(x)
    assert out.variance.shape == (3, 64, 64)
    assert out.variance.dtype == torch.float32
    assert float(out.variance.std()) > 0  # a map, not a constant
    logits = tiny(3, CFG_EDUE).eval()(x)
    assert logits.shape[1] == 3
    torch.testing.assert_close(out.probs[0], torch.softmax(logits[:, :2], dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.variance, 0.25 * torch.sigmoid(logits[:, 2]), atol=1e-5, rtol=0)


def test_edue_refuses_a_model_without_the_head():
    with pytest.raises(ConfigError, match="disagreement head"):
        Edue(tiny(0), CFG)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for name, cfg, seed in [("a", CFG, 0), ("b", CFG, 1), ("edue", CFG_EDUE, 2),
                            ("wide", ModelConfig(channels=(8, 16, 48), patch_size=64, mpp=2.0), 3),
                            ("finer", ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=1.0), 4)]:
        paths[name] = root / f"{name}.pt"
        save_checkpoint(paths[name], tiny(seed, cfg), cfg)
    return paths


def test_load_method_builds_each_method(checkpoints):
    c = checkpoints
    assert isinstance(load_method("ensemble", [c["a"], c["b"]]), Ensemble)
    mc = load_method("mc_dropout", [c["a"]], passes=3)
    assert isinstance(mc, McDropout) and mc.passes == 3
    tta = load_method("tta", [c["a"]], passes=4)
    assert isinstance(tta, Tta) and tta.passes == 4
    assert isinstance(load_method("edue", [c["edue"]]), Edue)
    assert set(METHODS) == {"ensemble", "mc_dropout", "tta", "edue"}


@pytest.mark.parametrize("name", ["mc_dropout", "tta", "edue"])
def test_load_method_refuses_several_checkpoints_for_a_single_model_method(checkpoints, name):
    with pytest.raises(ConfigError, match="only ensemble takes several"):
        load_method(name, [checkpoints["a"], checkpoints["b"]])


@pytest.mark.parametrize("other", ["wide", "finer", "edue"])
def test_load_method_refuses_an_ensemble_of_mixed_architectures(checkpoints, other):
    with pytest.raises(ConfigError, match="share one architecture"):
        load_method("ensemble", [checkpoints["a"], checkpoints["b"], checkpoints[other]])


def test_load_method_refuses_bad_requests(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="unknown uncertainty method"):
        load_method("dropout", [checkpoints["a"]])
    with pytest.raises(ConfigError, match="no model checkpoint"):
        load_method("tta", [])
    with pytest.raises(ConfigError, match="at least 2"):
        load_method("ensemble", [checkpoints["a"]])
    with pytest.raises(ConfigError, match="disagreement head"):
        load_method("edue", [checkpoints["a"]])
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_method("tta", [tmp_path / "missing.pt"])


# --- the slide engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tta_result(synthetic_tiff):
    """Tta over the synthetic slide: 2048x1536 px at 0.5 µm/px is 512x384 px at the model's 2 µm/px."""
    method = Tta(tiny(0), CFG, passes=4)
    with open_slide(synthetic_tiff.path) as slide:
        result = slide_uncertainty(method, slide, batch_size=3)  # uneven batches: 3 does not divide N
    return method, result


def _reference(method, slide, patches, p: int, m: int) -> dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The blended definition, computed the plain way: every patch's tile (the patch plus m px of
    context a side) predicted on its own, weighted by the ramps and summed on one canvas of the
    whole slide at the model's mpp; a patch's maps are the canvas over its box divided by the
    summed weights. {patch index: (p̄, measures)}."""
    scale = CFG.mpp / slide.mpp
    t = p + 2 * m
    w = ramp(t, m)[:, None] * ramp(t, m)[None, :]
    rows, cols = (round(d * slide.mpp / CFG.mpp) + 2 * t for d in slide.dimensions[::-1])
    acc: dict[str, np.ndarray] = {}
    total = np.zeros((rows, cols), np.float32)
    for loc in patches:
        rgb = slide.read_region((round(loc.x - m * scale), round(loc.y - m * scale)), (round(t * scale),) * 2, CFG.mpp)
        out = method(to_input(rgb[None]))
        layers = {"prob": out.probs.mean(0)[0, 1].numpy(), **{k: v[0].numpy() for k, v in compute_measures(out.probs).items()}}
        y, x = round(loc.y / scale) - m + t, round(loc.x / scale) - m + t  # canvas origin is t px before the slide's
        total[y : y + t, x : x + t] += w
        for name, layer in layers.items():
            acc.setdefault(name, np.zeros((rows, cols), np.float32))[y : y + t, x : x + t] += layer * w
    out = {}
    for i, loc in enumerate(patches):
        y, x = round(loc.y / scale) + t, round(loc.x / scale) + t
        box = (slice(y, y + p), slice(x, x + p))
        maps = {name: a[box] / total[box] for name, a in acc.items()}
        out[i] = (maps.pop("prob"), maps)
    return out


@pytest.fixture(scope="module")
def reference(synthetic_tiff, tta_result):
    method, result = tta_result
    with open_slide(synthetic_tiff.path) as slide:
        return _reference(method, slide, result.patches, CFG.patch_size, margin_for(CFG.patch_size))


def test_patch_table_coordinates_lead_back_to_the_same_pixels_and_scores(synthetic_tiff, tta_result, reference):
    method, result = tta_result
    rows = result.rows()
    assert len(rows) == len(result.patches)
    size0 = round(CFG.patch_size * CFG.mpp / synthetic_tiff.mpp)  # 256 level-0 px
    for row in rows:
        assert row["width"] == row["height"] == size0
        assert row["x"] % size0 == 0 and row["y"] % size0 == 0  # the non-overlapping grid
        assert row["mpp"] == CFG.mpp
        assert set(MEASURES) <= set(row)
    tissue = result.tissue
    # The rows are exactly the grid's boxes with at least 10% tissue, in grid order: no glass
    # patch scored, no tissue patch left out.
    with open_slide(synthetic_tiff.path) as slide:
        grid = patch_grid(slide, CFG.mpp, CFG.patch_size, tissue=tissue, min_tissue=0)
    kept = [(p.x, p.y) for p in grid if tissue.fraction_in((p.x, p.y), (p.width, p.height), synthetic_tiff.mpp) >= 0.1]
    assert [(row["x"], row["y"]) for row in rows] == kept
    assert 10 <= len(kept) < len(grid)  # the slide has both (2048x1536 px: a 8 x 6 grid of 256 px)
    with open_slide(synthetic_tiff.path) as slide:
        for i, row in enumerate(rows):
            box = (row["x"], row["y"]), (row["width"], row["height"])
            assert row["tissue_fraction"] == pytest.approx(tissue.fraction_in(*box, slide.mpp), abs=6e-5)
            prob, maps = reference[i]
            on_tissue = _tissue_pixels(tissue.mask, row["x"], row["y"])
            scores = patch_scores({k: v[None] for k, v in maps.items()}, on_tissue[None])
            for name in MEASURES:
                assert row[name] == pytest.approx(scores[name][0], abs=1e-4), (i, name)
            tumour = (prob >= 0.5) & on_tissue
            assert row["tumour_fraction"] == pytest.approx(tumour.sum() / on_tissue.sum(), abs=1e-4)


def test_without_margin_a_patch_is_its_own_prediction(synthetic_tiff):
    """margin_px=0: no context, no blending; each patch's maps are the method on the patch alone."""
    method = Tta(tiny(0), CFG, passes=2)
    with open_slide(synthetic_tiff.path) as slide:
        result = slide_uncertainty(method, slide, margin_px=0)
        for i in (0, len(result.patches) // 2, len(result.patches) - 1):
            loc = result.patches[i]
            out = method(to_input(slide.read_region((loc.x, loc.y), (loc.width, loc.height), CFG.mpp)[None]))
            on = _tissue_pixels(result.tissue.mask, loc.x, loc.y)
            scores = patch_scores(compute_measures(out.probs), on[None])
            assert result.scores["uga"][i] == pytest.approx(scores["uga"][0], abs=1e-4)


def test_blending_weights_sum_to_one_where_tiles_overlap():
    for p, m in ((64, 16), (256, 16), (512, 16), (8, 2)):
        w = ramp(p + 2 * m, m)
        assert w.min() > 0 and w.max() == 1.0
        shared = w[p:] + w[: 2 * m]  # tile k's last 2m px are tile k+1's first 2m
        assert np.allclose(shared, 1.0)
    assert np.array_equal(ramp(64, 0), np.ones(64, np.float32))


def _stitched(result_batches, patches, p: int, scale: float) -> np.ndarray:
    rows = max(round(loc.y / scale) for loc in patches) + p
    cols = max(round(loc.x / scale) for loc in patches) + p
    canvas = np.full((rows, cols), np.nan, np.float32)
    for res in result_batches:
        for loc, prob in zip(res.locations, res.prob):
            y, x = round(loc.y / scale), round(loc.x / scale)
            canvas[y : y + p, x : x + p] = prob
    return canvas


class _Blur(nn.Module):
    """A 15 px mean filter with zero padding as the tumour logit: exact given 7 px of context,
    and darker within 7 px of a tile's edge, where the padding's zeros come in (a seam)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 15, padding=7, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1].fill_(8.0 / (15 * 15 * 3))

    def forward(self, x):
        return self.conv(x)


def test_maps_have_no_seams_at_patch_borders(synthetic_tiff, tta_result):
    """Across a border between two computed patches the map changes no more than between
    neighbouring pixels inside a patch; without context (margin 0) the borders show."""
    _, result = tta_result
    method = PlainForward(_Blur(), CFG)
    p = CFG.patch_size
    with open_slide(synthetic_tiff.path) as slide:
        scale = CFG.mpp / slide.mpp
        jumps = {}
        for margin in (0, None):
            canvas = _stitched(iter_uncertainty(method, slide, result.patches, result.tissue, margin_px=margin),
                               result.patches, p, scale)
            step = np.abs(np.diff(canvas, axis=1))  # step[:, j] is between columns j and j+1
            border = step[:, p - 1 :: p]
            inside = np.delete(step, np.s_[p - 1 :: p], axis=1)
            jumps[margin] = np.nanmean(border) / np.nanmean(inside)
    assert jumps[0] > 2, jumps  # tile edges show without context
    assert jumps[None] < 1.0, jumps


def _tissue_pixels(mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The patch's tissue at 2 µm/px, straight from the 8 µm/px tissue mask: level-0 256 px is
    16 mask pixels, each covering 4x4 model pixels (the grid aligns exactly on this slide)."""
    i, j = y0 // 16, x0 // 16
    block = np.zeros((16, 16), bool)
    part = mask[i : i + 16, j : j + 16]
    block[: part.shape[0], : part.shape[1]] = part
    return block.repeat(4, axis=0).repeat(4, axis=1)


def test_slide_maps_sit_where_the_patches_are(synthetic_tiff, tta_result):
    _, result = tta_result
    assert result.map_mpp == 8.0 and result.mpp == CFG.mpp and result.method == "tta"
    shape = (round(synthetic_tiff.height * synthetic_tiff.mpp / 8), round(synthetic_tiff.width * synthetic_tiff.mpp / 8))
    assert result.prediction.shape == shape and result.prediction.dtype == bool
    for name in MEASURES:
        assert result.maps[name].shape == shape
    full = [i for i, loc in enumerate(result.patches) if loc.tissue_fraction == 1.0]
    assert full
    uga = result.maps["uga"]
    for i in full:
        loc = result.patches[i]
        y, x = loc.y // 16, loc.x // 16  # 16 level-0 px per 8 µm map pixel
        block = uga[y : y + 16, x : x + 16]
        assert not np.isnan(block).any()
        assert float(block.mean()) == pytest.approx(result.scores["uga"][i], abs=1e-4)
    # Nothing is drawn where no patch was computed: the slide's corner is glass.
    assert np.isnan(uga[:4, :4]).all()


def test_patch_score_is_the_mean_over_its_tissue_pixels_only(synthetic_tiff, tta_result):
    method, result = tta_result
    i = min(range(len(result.patches)), key=lambda k: result.patches[k].tissue_fraction)
    loc = result.patches[i]
    assert 0.1 <= loc.tissue_fraction < 0.5, "want a patch that is mostly background"
    res = _final(method, synthetic_tiff, result, [i])
    on = res.tissue[0]
    assert np.array_equal(on, _tissue_pixels(result.tissue.mask, loc.x, loc.y))
    assert 0 < on.mean() < 0.5
    assert on.mean() == pytest.approx(loc.tissue_fraction, abs=0.05)
    for name in MEASURES:
        manual = float(res.maps[name][0][on].mean())
        everything = float(res.maps[name][0].mean())
        assert result.scores[name][i] == pytest.approx(manual, abs=1e-5)
        if name != "mutual_information" or everything > 1e-3:
            # background pixels would pull the score elsewhere: they really are left out
            assert abs(manual - everything) > 1e-4, name
    assert result.tumour_fraction[i] == pytest.approx(((res.prob[0] >= 0.5) & on).sum() / on.sum())


def test_the_papers_scoring_is_written_beside_the_mean(synthetic_tiff, tta_result):
    from ugafl.common.patch_scoring import TISSUE_FLOOR, paper_score

    method, result = tta_result
    rows = result.rows()
    assert all(f"{name}_paper" in row for row in rows for name in MEASURES)
    sparse = min(range(len(result.patches)), key=lambda k: result.patches[k].tissue_fraction)
    full = max(range(len(result.patches)), key=lambda k: result.patches[k].tissue_fraction)
    res = _final(method, synthetic_tiff, result, [sparse, full])
    tumour = (res.prob >= 0.5) & res.tissue
    for name in MEASURES:
        expected = paper_score(res.maps[name].astype(np.float64), res.tissue, tumour)
        got = result.scores[f"{name}_paper"][[sparse, full]]
        assert np.allclose(got, expected, rtol=1e-5, equal_nan=True), name
    assert res.tissue[0].mean() < TISSUE_FLOOR
    assert np.isnan(result.scores["uga_paper"][sparse]) == (not tumour[0].any())  # the floor, unless tumour
    assert np.isfinite(result.scores["uga_paper"][full])


def _final(method, synthetic_tiff, result, which: list[int]) -> BatchUncertainty:
    """The final (blended) maps of patches `which` of `result`, from the stream over all its patches."""
    picked = {}
    with open_slide(synthetic_tiff.path) as slide:
        for res in iter_uncertainty(method, slide, result.patches, result.tissue, batch_size=4):
            for k, loc in enumerate(res.locations):
                i = result.patches.index(loc)
                if i in which:
                    picked[i] = (loc, res.prob[k], {n: v[k] for n, v in res.maps.items()}, res.tissue[k])
    rows = [picked[i] for i in which]
    return BatchUncertainty([r[0] for r in rows], np.stack([r[1] for r in rows]),
                            {n: np.stack([r[2][n] for r in rows]) for n in rows[0][2]}, np.stack([r[3] for r in rows]))


def test_timing_counts_every_patch(tta_result):
    _, result = tta_result
    t = result.timing
    assert t.patches == len(result.patches) > 0
    # No speed budget here (that is benchmarks/' job): compute time is recorded at all, and the
    # forward passes are intervals inside the wall-clock interval, so their sum can never exceed it.
    assert t.compute_s > 0
    assert t.wall_s >= t.compute_s


def test_timing_of_a_slide_without_tissue_patches(make_synthetic_tiff):
    blank = make_synthetic_tiff("blank.tiff", draw_tissue=False, size=(1024, 768), levels=3)
    with open_slide(blank.path) as slide:
        result = slide_uncertainty(Tta(tiny(0), CFG, passes=2), slide)
    assert result.patches == [] and result.rows() == []
    assert result.timing.patches == 0 and result.timing.compute_s == 0
    assert np.isnan(result.maps.get("uga", np.full(1, np.nan))).all()
    assert not result.prediction.any()


def _numpy_backed(measures: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The measures as tensors over numpy-allocated buffers, which tracemalloc sees (torch's own
    CPU allocator is invisible to it): the engine's per-pixel maps then count in the peak."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in measures.items()}


@pytest.mark.slow
def test_memory_stays_bounded_by_the_slides_width_not_its_area(make_synthetic_tiff, monkeypatch):
    """256 px patches at 0.5 µm/px, two at a time, on two slides of one width, the second 4x as
    tall. The stream holds about two grid rows of tiles, so its peak follows the width, not the
    area. tracemalloc sees numpy's buffers (tiles, tissue masks, pooled maps) and, through
    _numpy_backed, the per-pixel maps of every batch: holding them all would show."""
    import ugafl.common.uncertainty_engine as engine

    monkeypatch.setattr(engine, "compute_measures", lambda probs: _numpy_backed(compute_measures(probs)))
    cfg = ModelConfig(channels=(8, 16, 32), patch_size=256, mpp=0.5)
    method = PlainForward(tiny(0, cfg), cfg)
    peaks, counts, hold_all = [], [], []
    for height in (1536, 6144):
        made = make_synthetic_tiff(f"tall{height}.tiff", size=(2048, height), levels=3)
        with open_slide(made.path) as slide:
            tissue = TissueMask(np.ones((height // 16, 2048 // 16), bool), 8.0)  # all tissue: every patch is scored
            n = len(patch_grid(slide, cfg.mpp, cfg.patch_size, tissue=tissue))
            tracemalloc.start()
            try:
                result = slide_uncertainty(method, slide, tissue=tissue, batch_size=2)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        assert len(result.patches) == result.timing.patches == n
        counts.append(n)
        # Every patch's float32 per-pixel maps (the measures plus p̄) held at once.
        hold_all.append(n * cfg.patch_size**2 * 4 * (len(result.maps) + 1))
    print(f"peaks {peaks}, patches {counts}, holding every map {hold_all}")
    assert counts[1] >= 3 * counts[0]
    assert peaks[1] < hold_all[1] / 3, (peaks, hold_all)
    assert peaks[1] < 1.3 * peaks[0], f"peak grew {peaks[1] / peaks[0]:.2f}x for {counts[1] / counts[0]:.1f}x the patches"


def test_patches_of_a_physical_size_score_that_square(synthetic_tiff):
    """The corrected patch is a size in µm: 256 µm at the model's 2 µm/px is a 128 px square, a
    level-0 box of 512 px at 0.5 µm/px, scored over all its pixels (the model's own tile is 64 px)."""
    from ugafl.common.correction_patch import CORRECTION_PATCH_UM, patch_px

    assert CORRECTION_PATCH_UM == 1024.0 and patch_px(1024, 2.0) == 512 and patch_px(256, 2.0) == 128
    with pytest.raises(ValueError, match="must be > 0"):
        patch_px(0, 2.0)
    with open_slide(synthetic_tiff.path) as slide:
        result = slide_uncertainty(Tta(tiny(0), CFG, passes=2), slide, patch_px=patch_px(256, CFG.mpp))
    assert result.patches and all(p.width == p.height == 512 for p in result.patches)
    assert all(p.x % 512 == 0 and p.y % 512 == 0 for p in result.patches)
    assert result.timing.patches == len(result.patches)
