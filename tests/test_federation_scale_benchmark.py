"""benchmarks/federation_scale.py on 3 sites for 1 round: it runs our ServerApp on Flower's simulation
engine, and its numbers hold together (every site answered and was aggregated, every site sent and
received the same bytes, the weights travel three times out and once back, the timings nest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_federation_scale_benchmark_three_sites(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "federation_scale.py"), "--sites", "3",
                          "--rounds", "1", "--params", "6000", "--cpus-per-site", "1", "--offline", "bench",
                          "--strategies", "fedavg,fedmedian", "--workdir", str(tmp_path / "work"),
                          "--json", str(out), "--timeout-s", "300"],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "wall s/rnd" in run.stdout and "sent B/site/rnd" in run.stdout and "streaming-fedavg" in run.stdout

    data = json.loads(out.read_text())
    result, summary = data["results"][0], data["summaries"][0]
    model = result["model"]
    assert result["sites"] == 3 and result["sites-seen"] == 3 and model["params"] < 10_000  # UNet (4, 8, 16): 6,389
    assert summary["aggregated"] == 3 and summary["refused"] == 0
    assert "updates-aggregated" in result["rounds-csv"] and len(result["rounds-csv"].strip().splitlines()) == 2

    sent, received = result["bytes"]["sent-per-site-round"], result["bytes"]["received-per-site-round"]
    assert len(sent) == len(received) == 3 and min(sent) > 0 and min(received) > 0
    for kind, per_round in result["bytes"]["content-sizes"].items():  # one RecordDict size per round: all sites alike
        assert all(len(sizes) == 1 and sizes[0] > 0 for sizes in per_round.values()), kind
    assert max(sent) - min(sent) < 32 and max(received) - min(received) < 32  # message ids and node ids only
    assert 3 * model["fp32-bytes"] < min(sent) < 6 * model["fp32-bytes"]  # query, train, evaluate carry the weights
    assert model["fp32-bytes"] < min(received) < 3 * model["fp32-bytes"]  # only the train reply does

    assert 0 < summary["checks-s"] <= summary["aggregate-s"] and 0 < summary["strategy-s"] <= summary["aggregate-s"]
    assert summary["aggregate-s"] < summary["wall-s"] and summary["grid-wait-s"] < summary["wall-s"]
    # train replies are spooled to disk and read memory-mapped: none of them is held in the server's memory
    assert summary["replies-spooled-mb"] == pytest.approx(3 * model["fp32-bytes"] / 1e6, rel=0.01)
    assert summary["replies-held-mb"] == 0
    assert summary["agg-entry-traced-mb"] >= 0
    assert summary["rss-overall-peak-mb"] >= summary["agg-entry-rss-mb"] > 0

    offline = {r["strategy"]: r for r in data["offline"]}
    assert set(offline) == {"fedavg", "fedmedian", "streaming-fedavg (sketch)"}
    assert offline["fedavg"]["held-mb"] >= 3 * offline["fedavg"]["model-mb"]  # every reply's full copy, at once
    assert offline["streaming-fedavg (sketch)"]["extra-peak-mb"] > 0  # (it wins only with many sites)
