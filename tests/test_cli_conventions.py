"""The conventions people expect of a command-line tool (issue 19): `ugafl --version`; `--json`
with stable keys on every listing; status commands that exit non-zero when what they report is
down; log files that are rotated; an install that takes the tested versions (constraints.txt)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from review_helpers import make_review_workspace
from ugafl.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
ITEM_KEYS = {"id", "slide", "x", "y", "width", "height", "mpp", "score", "measure", "selection", "model_version",
             "round", "state", "reviewer", "created_at", "updated_at", "image_path", "model_mask_path",
             "uncertainty_path", "correction_path"}


@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    """CliRunner swaps stderr per call; the CLI's log handler is made again for each test."""
    logger = logging.getLogger("ugafl")
    kept = logger.handlers[:]
    logger.handlers.clear()
    yield
    logger.handlers[:] = kept


def run(*args: str) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_version_is_the_installed_package_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output == f"ugafl {importlib.metadata.version('ugafl')}\n"


def test_queue_list_and_show_as_json(tmp_path):
    ws = tmp_path / "ws"
    ids = make_review_workspace(ws, [0.9, 0.4])
    listed = run("queue", "list", "--workspace", ws, "--json")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert set(data) == {"workspace", "state", "items", "counts"}
    assert [item["id"] for item in data["items"]] == ids
    assert all(set(item) == ITEM_KEYS for item in data["items"])
    assert data["counts"] == {"pending": 2, "in_review": 0, "corrected": 0, "rejected": 0}
    pending = json.loads(run("queue", "list", "--workspace", ws, "--state", "corrected", "--json").stdout)
    assert pending["items"] == [] and pending["state"] == "corrected"

    shown = run("queue", "show", "--workspace", ws, str(ids[0]), "--json")
    assert shown.exit_code == 0, shown.output
    one = json.loads(shown.stdout)
    assert set(one) == {"item", "history"} and set(one["item"]) == ITEM_KEYS and one["item"]["score"] == 0.9
    assert [(h["action"], h["to_state"]) for h in one["history"]] == [("add", "pending")]
    assert set(one["history"][0]) == {"at", "who", "action", "from_state", "to_state", "detail"}


def _site(tmp_path: Path) -> Path:
    from ugafl.common.signing import generate_signing_key

    (tmp_path / "inbox").mkdir()
    generate_signing_key(tmp_path / "coord.key", tmp_path / "coord.pub")
    config = tmp_path / "site.toml"
    config.write_text('[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coord.pub"]\n'
                      '[coordinator]\naddress = "127.0.0.1:1"\nca = "ca.pem"\nnode_key = "node.key"\n')
    return config


def test_site_status_exits_3_when_the_daemon_is_down_and_creates_nothing(tmp_path):
    config = _site(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    text = run("site", "status", "--config", config)
    assert text.exit_code == 3, text.output
    assert "daemon             not running" in text.stdout
    assert text.stderr.strip().splitlines() == [f"the site daemon is not running (`ugafl site start --config {config}`)"]
    as_json = run("site", "status", "--config", config, "--json")
    assert as_json.exit_code == 3 and as_json.stderr == ""
    status = json.loads(as_json.stdout)
    assert status["running"] is False and status["connection"]["state"] == "never started"
    assert {"site", "workspace", "running", "pid", "connection", "coordinator", "model_version", "model_round",
            "queue", "rounds_taken_part", "last_round", "inbox", "refusals", "train", "review"} <= set(status)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no workspace was made
    assert "3 when it is not" in run("site", "status", "--help").output

    daemon = tmp_path / "ws" / "daemon"  # a daemon that runs (this process stands in for it)
    daemon.mkdir(parents=True)
    (daemon / "status.json").write_text(json.dumps({"pid": os.getpid(), "connection": {"state": "connected"},
                                                    "children": {}}))
    up = run("site", "status", "--config", config, "--json")
    assert up.exit_code == 0 and json.loads(up.stdout)["running"] is True


def _coordinator(tmp_path: Path) -> Path:
    from ugafl.common.checkpoint import save_checkpoint
    from ugafl.common.model import ModelConfig, build_model
    from ugafl.common.signing import generate_signing_key, load_private_key, sign_model, write_signature
    from ugafl.common.wire import unique_state

    (tmp_path / "state" / "checkpoints").mkdir(parents=True)
    (tmp_path / "pki").mkdir()
    (tmp_path / "app").mkdir()
    generate_signing_key(tmp_path / "pki" / "model-signing.key", tmp_path / "pki" / "model-signing.pub")
    cfg = ModelConfig(channels=(4, 8), patch_size=64)
    model = build_model(cfg)
    save_checkpoint(tmp_path / "central.pt", model, cfg)
    checkpoints = tmp_path / "state" / "checkpoints"
    signed = sign_model(load_private_key(tmp_path / "pki" / "model-signing.key"), unique_state(model), round=1,
                        run="r", model_config=cfg.to_dict())
    for n in (1, 2):
        save_checkpoint(checkpoints / f"round-000{n}.pt", model, cfg)
    write_signature(checkpoints / "round-0001.pt", signed)
    (checkpoints / "round-0002.pt.sig").write_text(json.dumps({**signed, "key": ["not", "a", "fingerprint"]}))
    (checkpoints / "round-0001.old.pt").write_bytes((checkpoints / "round-0001.pt").read_bytes())  # a stray copy
    config = tmp_path / "coordinator.toml"
    config.write_text('[coordinator]\nstate = "state"\npki = "pki"\napp = "app"\naddress = "127.0.0.1:9092"\n'
                      '[federation]\ncentral_checkpoint = "central.pt"\n')
    return config


def test_server_checkpoints_as_json_skip_stray_files_and_refuse_a_malformed_signature(tmp_path):
    config = _coordinator(tmp_path)
    text = run("server", "checkpoints", "--config", config)
    assert text.exit_code == 0, text.output
    assert "old" not in text.stdout and len(text.stdout.splitlines()) == 2
    listed = run("server", "checkpoints", "--config", config, "--json")
    assert [(c["round"], c["signed"]) for c in json.loads(listed.stdout)] == [(1, True), (2, False)]
    assert all(set(c) == {"round", "path", "signed"} for c in json.loads(listed.stdout))


def test_server_sites_and_runs_as_json_and_exit_3_when_the_superlink_is_down(tmp_path, monkeypatch):
    """`flwr` itself is replaced by what it prints (it takes seconds to start); the rest is real."""
    from ugafl.server import coordinator

    config = _coordinator(tmp_path)
    (tmp_path / "state" / "sites.json").write_text(json.dumps(
        {"umcu": {"node_id": "7", "fingerprint": "ab" * 32, "enrolled_at": "2026-12-01T00:00:00Z", "public_key": "k"}}))
    answers = {
        "supernode": {"success": True, "nodes": [{"node-id": 7, "status": "online", "online-at": "2026-12-01 10:00"}]},
        "list": {"success": True, "runs": [{"run-id": "42", "status": "finished:completed", "elapsed": "00:01:02",
                                            "fab-hash": "f" * 64, "running-at": "2026-12-01 10:01"}]}}
    down = False

    def fake_flwr(argv, **kwargs):
        if down:
            return subprocess.CompletedProcess(argv, 1, "Connection to the SuperLink is unavailable\n", "")
        return subprocess.CompletedProcess(argv, 0, json.dumps(answers[argv[1]]), "")

    monkeypatch.setattr(coordinator.subprocess, "run", fake_flwr)
    sites = run("server", "sites", "--config", config, "--json")
    assert sites.exit_code == 0, sites.output
    assert json.loads(sites.stdout) == [{"name": "umcu", "node_id": "7", "status": "online",
                                         "online_at": "2026-12-01 10:00", "offline_at": "", "fingerprint": "ab" * 32}]
    runs = run("server", "runs", "--config", config, "--json")
    assert runs.exit_code == 0, runs.output
    assert json.loads(runs.stdout) == [{"run_id": 42, "status": "finished:completed", "status_details": "",
                                        "elapsed": "00:01:02", "fab_hash": "f" * 64, "pending_at": "",
                                        "starting_at": "", "running_at": "2026-12-01 10:01", "finished_at": ""}]
    down = True
    for command in ("sites", "runs"):
        result = run("server", command, "--config", config, "--json")
        assert result.exit_code == 3, result.output
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
        assert "cannot reach the coordinator's SuperLink" in result.stderr
        assert "Exit code 3" in run("server", command, "--help").output


def test_log_files_are_rotated(tmp_path):
    from logging.handlers import RotatingFileHandler

    from ugafl.common.log import LOG_BACKUPS, LOG_MAX_BYTES, add_file_log, get_logger

    path = tmp_path / "logs" / "site.log"
    handler = add_file_log(path, max_bytes=2_000, backups=2)
    try:
        for i in range(200):
            get_logger("test").warning("line %03d %s", i, "x" * 40)
    finally:
        logging.getLogger("ugafl").removeHandler(handler)
        handler.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["site.log", "site.log.1", "site.log.2"]
    assert all(p.stat().st_size <= 2_000 for p in path.parent.iterdir())
    assert "line 199" in path.read_text() and "line 000" not in path.read_text()  # the oldest were dropped
    default = add_file_log(tmp_path / "d.log")
    logging.getLogger("ugafl").removeHandler(default)
    default.close()
    assert isinstance(default, RotatingFileHandler)
    assert (default.maxBytes, default.backupCount) == (LOG_MAX_BYTES, LOG_BACKUPS) == (10 * 1024 * 1024, 5)


def test_the_daemons_log_through_the_rotating_file_log():
    """The site daemon and the coordinator write their log files only through add_file_log."""
    for module in ("client/daemon/site_daemon.py", "server/coordinator.py"):
        text = (REPO / module).read_text()
        assert "add_file_log(" in text and "FileHandler(" not in text, module


def test_installs_take_the_tested_versions():
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in constraints if line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0"  # no local label: matches the CPU wheel here and PyTorch's CPU index
    assert not any(name.startswith("nvidia") for name in pins)
    for name in ("flwr", "monai", "numpy", "openslide-python", "pydantic", "click", "ray", "pytest"):
        assert name in pins, name
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip install .*(torch==|-e )", line)]
    assert installs and all("$(CONSTRAINTS)" in line for line in installs)
    assert "CONSTRAINTS ?= -c constraints.txt" in makefile and "\nlock: " in makefile
