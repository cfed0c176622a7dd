"""The experiment pipeline: the table and summary from hand-made arm results, and the `quick`
config end to end through the console script (every strategy's row complete, plots written,
a second run resumes without running any arm again, and an arm stopped mid-way runs again
from the start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ugafl.simulations.experiment import ExperimentConfig, summarise, table_markdown

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _arm(strategy: str, seed: int, at5: float, at10: float) -> dict:
    return {"arm": f"tta-{strategy}-s{seed}", "method": "tta", "selection": strategy, "seed": seed,
            "dice": {"5": {"RUMC": 0.9, "A": at5, "B": at5 + 0.1}, "10": {"RUMC": 0.9, "A": at10, "B": at10 + 0.1}},
            "pooled": {"RUMC": 0.95, "A": 0.8, "B": 0.9}, "seconds": 1.0}


def test_summary_is_mean_and_sd_over_seeds_of_the_external_centres() -> None:
    exp = ExperimentConfig(seeds=(0, 1), patches=(5, 10))
    results = [_arm("random", 0, 0.5, 0.6), _arm("random", 1, 0.7, 0.8), _arm("top-k", 0, 0.6, 0.7)]
    summary = summarise(results, {"RUMC": 0.9, "A": 0.4, "B": 0.5}, exp, "RUMC")
    assert summary["external"] == ["A", "B"] and summary["baseline"]["external"] == pytest.approx(0.45)
    random = summary["groups"]["tta / random"]
    assert random["5"]["A"] == pytest.approx((0.6, 0.1414213), rel=1e-5)  # mean, sample sd
    assert random["10"]["external"][0] == pytest.approx((0.65 + 0.85) / 2)
    assert summary["groups"]["tta / top-k"]["5"]["A"] == (0.6, 0.0)
    table = table_markdown(summary, exp)
    assert "| central model | baseline | 0.900 | 0.400 | 0.500 | **0.450** | 0.66 |" in table
    assert "| tta / random | +5 patches | 0.600 ± 0.141 | 0.700 ± 0.141 | 0.900 ± 0.000 |" not in table  # centre order
    assert "| tta / random | +10 patches |" in table and table.count("pooled, +10 (not federated)") == 2
    assert "patches with tumour" not in table  # arms without a record of what they picked


def test_what_the_sites_picked_is_pooled_over_seeds() -> None:
    exp = ExperimentConfig(seeds=(0, 1), patches=(5, 10))
    results = [_arm("top-k", 0, 0.5, 0.6), _arm("top-k", 1, 0.7, 0.8)]
    for r, (share, empty) in zip(results, [(0.25, 2), (0.75, 0)]):
        r["picked"] = {"1": {"patches": 8, "with_tumour": share, "tumour_share": 0.1, "sites": 2,
                             "sites_without_tumour": empty}}
    summary = summarise(results, {"RUMC": 0.9, "A": 0.4, "B": 0.5}, exp, "RUMC")
    assert summary["groups"]["tta / top-k"]["picked"] == {"1": {"with_tumour": 0.5, "sites_without_tumour": 2, "sites": 4}}
    assert "| tta / top-k | 1 | 50% | 2 of 4 |" in table_markdown(summary, exp)


def test_the_pooled_reference_trains_on_every_pixel_of_a_corrected_patch() -> None:
    import numpy as np

    from ugafl.simulations.experiment import tiles

    patches = np.arange(2 * 512 * 500).reshape(2, 512, 500)
    out = tiles(patches, 192)
    assert out.shape == (18, 192, 192)  # 3 x 3 tiles per patch, the last ones flush with the edges
    for k in range(2):
        assert set(np.unique(out[k * 9:(k + 1) * 9])) == set(np.unique(patches[k]))
    assert set(np.unique(out)) == set(np.unique(patches))
    with pytest.raises(ValueError, match="smaller than a 192 px tile"):
        tiles(patches[:, :100], 192)


def test_an_evaluation_on_the_training_split_is_never_taken_for_the_test_split(tmp_path: Path) -> None:
    from ugafl.simulations.experiment import ExperimentConfig, _remember_evaluation

    from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
    from ugafl.common.model import ModelConfig, build_model

    cfg = ModelConfig(channels=(4, 8))
    model = tmp_path / "m.pt"
    save_checkpoint(model, build_model(cfg), cfg)
    (tmp_path / "dice.json").write_text('{"A": 0.5}')
    (tmp_path / "slides.json").write_text("[]")
    _remember_evaluation(model, tmp_path / "dice.json", tmp_path / "slides.json", tmp_path / "cache", "train")
    digest = load_checkpoint(model).content_hash[:24]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest}-train.json"]
    assert ExperimentConfig().eval_split == "test"


@pytest.mark.parametrize("config", sorted((REPO / "simulations/configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_config_is_valid(config: Path) -> None:
    from ugafl.common.config import load_config
    from ugafl.simulations.experiment import check_federation

    cfg = load_config(config)
    exp = cfg.section(ExperimentConfig, "experiment")
    if config.stem.startswith("tuning-"):  # tuning runs never look at the test slides
        assert exp.eval_split == "train" and set(exp.selections) <= {"random", "top-k", "stochastic-batch"}
    elif config.stem in ("benchmark-dp", "benchmark-stain", "benchmark-stain-off"):  # one strategy, compared with
        # another run's arms of the same seeds (benchmark.toml's; the stain run with its control)
        assert exp.eval_split == "test" and exp.selections == ("stochastic-batch",) and exp.seeds == (0, 1, 2, 3, 4)
    else:
        assert exp.eval_split == "test" and exp.selections == ("random", "top-k", "stochastic-batch")
    check_federation(cfg)


def test_a_bad_federation_section_is_refused_before_any_data_is_made(tmp_path: Path) -> None:
    from ugafl.common.config import load_config
    from ugafl.common.errors import ConfigError
    from ugafl.simulations.experiment import run_experiment

    config = tmp_path / "bad.toml"
    config.write_text((REPO / "simulations/configs/quick.toml").read_text().replace("local_steps = 8", "local_steps = \"many\""))
    with pytest.raises(ConfigError, match=r"bad.toml \[federation\] local_steps: expected an integer, got 'many'$"):
        run_experiment(load_config(config), tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()


def test_a_run_folder_of_another_recipe_is_not_resumed(tmp_path: Path) -> None:
    from ugafl.common.config import load_config
    from ugafl.common.errors import ConfigError
    from ugafl.simulations.experiment import check_same_setup, run_experiment

    quick = (REPO / "simulations/configs/quick.toml").read_text()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(quick)
    more_seeds = tmp_path / "more.toml"
    more_seeds.write_text(quick.replace("seeds = [0]", "seeds = [0, 1]"))
    check_same_setup(load_config(more_seeds), run)  # more arms of the same setup: resumes
    other = tmp_path / "other.toml"
    other.write_text(quick.replace("local_steps = 8", "local_steps = 8\nlocal_training = \"plain\""))
    with pytest.raises(ConfigError, match=r"other.toml: .*run holds arms run with another setup "
                                          r"\(\[federation\] local_training: 'anchored' -> 'plain'\); give this run another --name"):
        run_experiment(load_config(other), run)
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]
    assert (run / "config.toml").read_text() == quick


@pytest.mark.slow
def test_the_quick_config_runs_and_resumes(tmp_path: Path) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ugafl"), "experiment", "--config", str(REPO / "simulations/configs/quick.toml"),
                               "--runs", str(tmp_path)], capture_output=True, text=True, timeout=1500)

    done = run()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "quick"
    table = (out / "table.md").read_text()
    for strategy in ("random", "top-k", "stochastic-batch"):
        for stage in ("+2 patches", "+4 patches", "pooled, +4 (not federated)"):
            row = next(line for line in table.splitlines() if line.startswith(f"| tta / {strategy} | {stage} |"))
            assert row.count(" ± ") == 4, row  # three centres and the external mean
    results = json.loads((out / "results.json").read_text())
    assert sorted(a["arm"] for a in results["arms"]) == ["null-s0", "oracle-s0", "tta-random-s0",
                                                         "tta-stochastic-batch-s0", "tta-top-k-s0"]
    for name in ("dice_vs_patches.png", "per_centre.png", "size_classes.png", "versions.json", "config.toml",
                 "baseline.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"null", "oracle", "random", "top-k", "stochastic-batch"}
    assert all(set(a) == {"2", "4"} for a in summary["arms"].values())
    assert set(summary["vs_random"]) == {"null", "oracle", "top-k", "stochastic-batch"}
    assert summary["test_slides"] == {c: {"negative": 0, "itc": 0, "micro": 0, "macro": 1} for c in ("RUMC", "UMCU", "RST")}
    strategies = [a for a in results["arms"] if a["kind"] == "strategy"]
    # The references: nobody corrected in the null arm (its sites never trained), the oracle's sites
    # corrected every candidate patch in round 1 and trained in both rounds.
    from ugafl.client.queue.store import CorrectionQueue
    from ugafl.client.round.local_training import trained_on

    for site in ("1", "2"):
        with CorrectionQueue(out / "arms" / "null-s0" / "sites" / site / "ws") as queue:
            assert queue.counts().get("corrected", 0) == 0 and len(queue.list()) == 4
        with CorrectionQueue(out / "arms" / "oracle-s0" / "sites" / site / "ws") as queue:
            rounds = {i.round for i in queue.list("corrected")}
            assert rounds == {1} and len(queue.list("corrected")) == len(queue.list()) > 4
        outbox = (out / "arms" / "oracle-s0" / "sites" / site / "ws" / "federation" / "outbox.jsonl").read_text()
        assert sum('"train"' in line and '"sha256"' in line for line in outbox.splitlines()) == 2, outbox
        assert trained_on(out / "arms" / "null-s0" / "sites" / site / "ws") == []
    # Work that is the same in every arm is done once: the central model's uncertainty at each site
    # (one shared folder per site), and the central site's round-1 training (one memo entry, then
    # one per arm for round 2, whose incoming models all differ).
    for arm in results["arms"]:
        link = out / "arms" / arm["arm"] / "sites" / "1" / "ws" / "uncertainty"
        assert link.is_symlink() and link.resolve() == (out / "shared" / "uncertainty" / "1").resolve()
    assert len(list((out / "shared" / "central-training").glob("*/metrics.json"))) == 1 + len(results["arms"])
    # Same data, model and seeds: the arms differ in the patches chosen (and the strategy recorded).
    chosen = {}
    for arm in strategies:
        with CorrectionQueue(out / "arms" / arm["arm"] / "sites" / "1" / "ws") as queue:
            items = [i for state in ("pending", "corrected") for i in queue.list(state)]
        assert len(items) == 4 and {i.selection for i in items} == {arm["selection"]}, items
        chosen[arm["selection"]] = {(i.slide, i.x, i.y) for i in items}
    assert chosen["random"] != chosen["top-k"]
    for arm in strategies:  # two external sites, two patches each per round
        assert {k: (v["patches"], v["sites"]) for k, v in arm["picked"].items()} == {"1": (4, 2), "2": (4, 2)}, arm
    assert "| tta / top-k | 2 |" in table

    # The replay of round 1, given the config's own recipe, reproduces the arm's first checkpoint.
    from ugafl.client.round.local_training import LocalRecipe
    from ugafl.common.config import load_config
    from ugafl.server.federation.rounds import local_recipe
    from ugafl.simulations.federated import federation_settings
    from ugafl.simulations.first_round_check import first_round

    settings, _ = federation_settings(load_config(out / "config.toml"))
    assert settings.local_training == "anchored" and not settings.gate
    arm = next(a for a in results["arms"] if a["selection"] == "top-k")
    again_dice = first_round(out, "top-k", LocalRecipe.from_message(local_recipe(settings)), seed=0, split="test")
    assert again_dice.pop("external") == pytest.approx(sum(v for c, v in arm["dice"]["2"].items() if c != "RUMC") / 2,
                                                        abs=0.01)
    assert again_dice == pytest.approx(arm["dice"]["2"], abs=0.01)
    stamps = {p: p.stat().st_mtime for p in (out / "arms").glob("*/result.json")}
    again = run()  # resumes: every arm is complete, so none runs again
    assert again.returncode == 0 and "site(s) connected" not in again.stderr and "arms: 100%" in again.stderr
    assert {p: p.stat().st_mtime for p in (out / "arms").glob("*/result.json")} == stamps
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]
    # The report of a run in progress: only the complete arms, none run.
    (out / "arms" / "oracle-s0" / "result.json").rename(out / "oracle.json")
    report = subprocess.run([str(BIN / "ugafl"), "experiment", "--config", str(REPO / "simulations/configs/quick.toml"),
                             "--runs", str(tmp_path), "--report-only"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "report of 4 of 5 arms" in report.stderr, report.stderr[-2000:]
    assert set(json.loads((out / "summary.json").read_text())["arms"]) == {"null", "random", "top-k", "stochastic-batch"}
    assert not (out / "arms" / "oracle-s0" / "result.json").exists()
    (out / "oracle.json").rename(out / "arms" / "oracle-s0" / "result.json")

    # Stopped in its last round: the arm runs again from the start, not on top of its half-done queues.
    stopped = out / "arms" / results["arms"][0]["arm"]
    (stopped / "result.json").unlink()
    (stopped / "federated" / "round-0002.pt").unlink()
    resumed = run()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "was stopped before it finished" in resumed.stderr
    assert (stopped / "result.json").is_file() and (stopped / "federated" / "round-0002.pt").is_file()
    with CorrectionQueue(stopped / "sites" / "1" / "ws") as queue:
        assert len([i for state in ("pending", "corrected") for i in queue.list(state)]) == 4
    assert {p: p.stat().st_mtime for p in (out / "arms").glob("*/result.json") if p.parent != stopped} == \
        {p: t for p, t in stamps.items() if p.parent != stopped}
