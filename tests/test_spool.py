"""Updates kept on the coordinator's disk (server.federation.spool): every strategy, with and
without clipping, aggregates spooled updates to exactly what it makes of the same updates in
memory, refuses the same bad ones, and holds about one model instead of one per site."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ugafl.server.federation import rounds
from ugafl.server.federation.aggregation import AGGREGATION_NAMES
from ugafl.server.federation.settings import FederationSettings
from ugafl.server.federation.sites import Reply
from ugafl.server.federation.spool import SpooledArrays, round_spool, spool


def reference(scale: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(size=(16 * scale, 8, 3, 3)).astype(np.float32),
            "conv.bias": rng.normal(size=(16 * scale,)).astype(np.float32),
            "norm.steps": np.array([7], np.int64), "head/odd name": rng.normal(size=(4, 16 * scale)).astype(np.float32)}


def updates(ref: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng([1, i])
        out.append({k: (v + rng.normal(0, 0.01, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v.copy()
                    for k, v in ref.items()})
    out[2]["conv.bias"] = out[2]["conv.bias"] * 1e4  # an outlier the norm check refuses
    out[3]["conv.weight"][0, 0, 0, 0] = np.nan  # a poisoned update
    return out


@pytest.mark.parametrize("aggregation", AGGREGATION_NAMES)
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_spooled_updates_aggregate_exactly_as_in_memory(tmp_path: Path, aggregation: str, clip: float) -> None:
    ref = reference()
    ups = updates(ref, 7)
    settings = FederationSettings(central_checkpoint="-", out_dir=str(tmp_path), signing_key="-",
                                  aggregation=aggregation, dp_clip_norm=clip)
    in_memory = [Reply(i + 1, {"num-examples": 10.0 + i}, u) for i, u in enumerate(ups)]
    folder = round_spool(tmp_path, 1)
    on_disk = [Reply(i + 1, {"num-examples": 10.0 + i}, spool(u, folder / f"site-{i + 1}")) for i, u in enumerate(ups)]
    assert isinstance(on_disk[0].arrays, SpooledArrays) and list(on_disk[0].arrays) == list(ref)
    a = rounds.aggregate(1, in_memory, ref, settings)
    b = rounds.aggregate(1, on_disk, ref, settings)
    assert a.accepted == b.accepted == 5 and sorted(s for s, _ in a.refused) == sorted(s for s, _ in b.refused) == [3, 4]
    assert set(a.arrays) == set(b.arrays) == set(ref)
    for name in ref:
        assert not isinstance(b.arrays[name], np.memmap), name  # the aggregate lives in memory
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
        assert b.arrays[name].dtype == a.arrays[name].dtype


def _aggregation_peak(tmp_path: Path, ref: dict[str, np.ndarray], n: int) -> int:
    """tracemalloc's peak while `rounds.aggregate` takes n spooled updates."""
    folder = round_spool(tmp_path, n)
    replies = [Reply(i + 1, {"num-examples": 10.0}, spool(u, folder / f"site-{i + 1}"))
               for i, u in enumerate(updates(ref, n))]
    settings = FederationSettings(central_checkpoint="-", out_dir=str(tmp_path), signing_key="-")
    tracemalloc.start()
    result = rounds.aggregate(1, replies, ref, settings)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.accepted == n - 2
    return peak


def test_a_round_of_spooled_updates_holds_about_one_model_whatever_the_number_of_sites(tmp_path: Path) -> None:
    ref = reference(scale=256)  # 1.3 MB: large beside what other threads of a test run allocate meanwhile
    model = sum(v.nbytes for v in ref.values())
    few, many = _aggregation_peak(tmp_path, ref, 8), _aggregation_peak(tmp_path, ref, 40)
    # In memory, 40 replies alone would hold 40 models; spooled, the peak is the aggregate and the
    # float64 temporaries of one array, the same for 8 sites as for 40.
    assert many < 8 * model and many < 1.2 * few, (few, many, model)
    assert round_spool(tmp_path, 40).parent == tmp_path / "spool" and not (tmp_path / "spool" / "round-0040").exists()
