"""What `ugafl demo` shows on the terminal (issue 19): one line per stage and per federated round,
no Python warnings, no Flower or Ray banners or log lines (those go to runs/<name>/logs/flower.log), no
traceback, and the Dice table as the last lines. Run end to end through the console script on the
quick experiment's small centres and model, with two federated rounds on Flower's simulation engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROUNDS = 2
FEDERATION = f"""
[federation]
num_rounds = {ROUNDS}
weighting = "sites"
budget = 2
passes = 2
local_steps = 8
cpus_per_site = 1
"""
# Flower's own log format ("INFO :      ...", coloured or not) and Ray's banners and forwarded lines
FLOWER_OR_RAY = re.compile(r"^(\x1b\[[0-9;]*m)?(DEBUG|INFO|WARNING|ERROR)\s*(\x1b\[[0-9;]*m)?\s*:|Ray instance|"
                           r"ray\.init|\(ClientAppActor|\(raylet\)|pid=\d+|DEPRECATED FEATURE")


def small_config(tmp_path: Path) -> Path:
    """The quick experiment's [data], [model], [train] and [central], with a short [federation]."""
    quick = (REPO / "simulations" / "configs" / "quick.toml").read_text()
    config = tmp_path / "small-demo.toml"
    config.write_text(quick.split("[federation]")[0] + FEDERATION)
    return config


@pytest.mark.slow
def test_the_demo_prints_a_few_progress_lines_and_ends_with_the_dice_table(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    done = subprocess.run([str(BIN / "ugafl"), "demo", "--config", str(config), "--name", "small",
                           "--runs", str(tmp_path / "runs")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1800, cwd=tmp_path, env=env)
    shown = done.stdout
    lines = shown.splitlines()
    assert done.returncode == 0, shown[-5000:]
    assert len(lines) <= 60, shown
    assert "Traceback" not in shown, shown
    # no Python warning (ours or a library's); a WARNING the round logs (the gate refused a model) is news, not noise
    assert not [line for line in lines if re.search(r"\w+Warning\b|warnings\.warn", line)], shown
    assert not [line for line in lines if FLOWER_OR_RAY.search(line)], shown
    assert "\r" not in shown  # no progress bar redrawn into a pipe

    # one line per stage and per round, with the figures that matter
    for stage in ("data: 9 synthetic slides of 3 centres", "central model: trained on RUMC's",
                  "central model's Dice on the test slides: RUMC", "federation: 2 rounds, 3 sites"):
        assert sum(stage in line for line in lines) == 1, (stage, shown)
    rounds = [line for line in lines if re.search(r"\bround \d+/2: ", line)]
    assert len(rounds) == ROUNDS, shown
    for n, line in enumerate(rounds, 1):
        assert f"round {n}/2: " in line and "updates aggregated" in line and "refused" in line, line
        assert re.search(r"RUMC test \d\.\d{3}; \d+ s$", line), line

    # the Dice table last: a header, one row per centre, the external centres' mean
    table = lines[-5:]
    assert table[0].split() == ["centre", "before", "after", "change"], shown
    assert [row.split()[0] for row in table[1:]] == ["RUMC", "UMCU", "RST", "others"], shown
    for row in table[1:]:
        before, after, change = (float(x) for x in row.split()[1:4])
        assert 0 <= before <= 1 and 0 <= after <= 1 and change == pytest.approx(after - before, abs=1.5e-3), row

    # Flower's and Ray's own output, and our other log lines, are in the run's log files
    logs = tmp_path / "runs" / "small" / "logs"
    flower = (logs / "flower.log").read_text()
    assert flower.strip(), "flower.log is empty"
    assert "ClientAppActor" in flower  # what the sites' processes printed, forwarded by Ray
    assert "\x1b[" not in flower  # without terminal colour codes
    ours = (logs / "demo.log").read_text()
    assert "ugafl.progress: round 2/2: " in ours and "ugafl.rounds: round 1 done in" in ours


@pytest.mark.slow
def test_a_failing_simulation_is_one_line_that_names_the_log_file(tmp_path: Path, capfd) -> None:
    """The ServerApp stops at once (a run config it refuses): the caller gets one SimulationFailed
    line naming Flower's log file, which holds the traceback; nothing is printed, and Flower's
    console handler and the process's stdout and stderr are as they were."""
    import logging

    import flwr.common.logger  # noqa: F401 - Flower's console handler is added when it is imported
    from ugafl.simulations.flower_simulation import SimulationFailed, run_flower_simulation

    flower_handlers = list(logging.getLogger("flwr").handlers)
    streams = (sys.stdout, sys.stderr)
    log_file = tmp_path / "logs" / "flower.log"
    (tmp_path / "sites").mkdir()
    with pytest.raises(SimulationFailed) as failed:
        run_flower_simulation({"num-rounds": "many"}, tmp_path / "sites", 1, log_file=log_file)
    message = str(failed.value)
    assert "\n" not in message and message.endswith(f"see {log_file}"), message
    assert "num-rounds: expected an integer, got 'many'" in message
    logged = log_file.read_text()
    assert "Traceback" in logged and "expected an integer" in logged
    assert logging.getLogger("flwr").handlers == flower_handlers and (sys.stdout, sys.stderr) == streams
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "INFO :" not in out + err, out + err
