"""Every command, given a bad input a person makes (issue 19): a wrong path, a file where a folder
belongs or the reverse, a corrupt queue database, a config of the wrong encoding, type or key, an
unknown device or a GPU the machine lacks, a checkpoint of the wrong shape, an output path that
cannot be written. Each case asserts exit code 2, exactly one line on stderr that names the
offending file or option, no traceback, and that nothing was written (the fixture folders and the
working folder are snapshotted before and after).

The commands run in-process through click's CliRunner (the same root group and error handling as
the console script); two cases run the installed `ugafl` in a fresh process as well."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import write_synthetic_tiff

UGAFL = Path(sys.executable).with_name("ugafl")


# ---------------------------------------------------------------------- fixtures

def _variant(payload: dict, path: Path, **change) -> None:
    """A copy of a checkpoint's payload with keys changed (None: removed), saved at `path`."""
    changed = dict(payload)
    for key, value in change.items():
        if value is None:
            changed.pop(key)
        else:
            changed[key] = value
    torch.save(changed, path)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Tiny inputs, good and bad, made once: checkpoints, a slide, workspaces, configs, a site and a
    coordinator. No case may change anything in here (each one checks)."""
    from ugafl.client.queue.store import CorrectionQueue
    from ugafl.common.checkpoint import save_checkpoint
    from ugafl.common.manifest import MANIFEST_FORMAT
    from ugafl.common.model import ModelConfig, build_model
    from ugafl.common.pki import create_ca, create_server_cert
    from ugafl.common.signing import generate_signing_key, load_private_key, sign_model, write_signature
    from ugafl.common.wire import unique_state

    root = tmp_path_factory.mktemp("bad_input")
    cfg = ModelConfig(channels=(4, 8), patch_size=64)
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(root / "good.pt", model, cfg)
    payload = torch.load(root / "good.pt", weights_only=True)
    _variant(payload, root / "no_config.pt", model_config=None)
    _variant(payload, root / "config_type.pt", model_config={**payload["model_config"], "channels": "abc"})
    _variant(payload, root / "no_state.pt", state_dict=None)
    torch.save(model.state_dict(), root / "plain.pt")  # a bare state dict: not our format
    (root / "text.pt").write_text("not a checkpoint\n")
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("x\n")
    write_synthetic_tiff(root / "slide.tiff", size=(512, 384), levels=2)

    CorrectionQueue(root / "ws").close()
    (root / "ws_badq").mkdir()
    (root / "ws_badq" / "queue.db").write_bytes(b"this is not a SQLite database\n" * 20)
    (root / "ws_dirq" / "queue.db").mkdir(parents=True)  # a folder where the queue's file belongs
    (root / "ws_emptyq").mkdir()
    (root / "ws_emptyq" / "queue.db").write_bytes(b"")  # SQLite would take it as a new database
    (root / "data").mkdir()
    (root / "data" / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "info": {}, "slides": []}))
    (root / "data_latin1").mkdir()
    (root / "data_latin1" / "manifest.json").write_bytes('{"format": "café"}'.encode("latin-1"))
    (root / "ann.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (root / "ann_latin1.geojson").write_bytes('{"type": "FeatureCollection", "x": "café"}'.encode("latin-1"))

    # run configs
    (root / "latin1.toml").write_bytes("[train]\n# café\nsteps = 5\n".encode("latin-1"))
    (root / "steps_many.toml").write_text('[train]\nsteps = "many"\n')
    (root / "unknown_key.toml").write_text("[train]\nstepz = 5\n")
    (root / "fed_bad.toml").write_text('[federation]\nlocal_steps = "many"\n')
    (root / "nofed.toml").write_text("[train]\nsteps = 5\n")

    # the coordinator's PKI (its CA is the site's too)
    coord = root / "coord"
    pki = coord / "pki"
    pki.mkdir(parents=True)
    create_ca(pki / "ca.pem", pki / "ca.key")
    create_server_cert(pki / "superlink.pem", pki / "superlink.key", pki / "ca.pem", pki / "ca.key", ["localhost"])
    generate_signing_key(pki / "model-signing.key", pki / "model-signing.pub")

    # a site: every config below is wrong in one way, so `site start` never starts
    site = root / "site"
    (site / "inbox").mkdir(parents=True)
    generate_signing_key(site / "coord.key", site / "coord.pub")
    (site / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    (site / "bad_ca.pem").write_text("not a certificate\n")
    (site / "node.key").write_text("x\n")
    os.chmod(site / "node.key", 0o600)
    base = ('[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["coord.pub"]\n'
            '[coordinator]\naddress = "127.0.0.1:1"\nca = "ca.pem"\nnode_key = "node.key"\n')
    (site / "bad_ca.toml").write_text(base.replace('ca = "ca.pem"', 'ca = "bad_ca.pem"'))
    (site / "latin1.toml").write_bytes((base + "# café\n").encode("latin-1"))
    (site / "slides_type.toml").write_text(base.replace('slides = "inbox"', "slides = 5"))
    (site / "device.toml").write_text(base.replace("trusted_keys", 'device = "banana"\ntrusted_keys'))
    (site / "ws_file.toml").write_text(base.replace('workspace = "ws"', 'workspace = "ws_file"'))
    (site / "ws_file").write_text("x\n")
    (site / "badq.toml").write_text(base.replace('workspace = "ws"', 'workspace = "ws_badq"'))
    (site / "ws_badq").mkdir()
    (site / "ws_badq" / "queue.db").write_bytes(b"not sqlite\n" * 20)
    (site / "badstatus.toml").write_text(base.replace('workspace = "ws"', 'workspace = "ws_status"'))
    (site / "ws_status" / "daemon").mkdir(parents=True)
    (site / "ws_status" / "daemon" / "status.json").write_text("{broken")

    # a coordinator: a real PKI, an app folder without pyproject.toml, stray round files
    (coord / "state").mkdir()
    (coord / "app").mkdir()
    cbase = ('[coordinator]\nstate = "state"\npki = "pki"\napp = "app"\naddress = "127.0.0.1:9092"\n'
             '[federation]\ncentral_checkpoint = "../good.pt"\n')
    (coord / "coordinator.toml").write_text(cbase)
    (coord / "latin1.toml").write_bytes((cbase + "# café\n").encode("latin-1"))
    (coord / "address_type.toml").write_text(cbase.replace('address = "127.0.0.1:9092"', "address = 9092"))
    (coord / "rounds_type.toml").write_text(cbase + 'num_rounds = "many"\n')
    (coord / "no_state.toml").write_text(cbase.replace('state = "state"', 'state = "typo"'))
    checkpoints = coord / "state" / "checkpoints"
    checkpoints.mkdir()
    key = load_private_key(pki / "model-signing.key")
    save_checkpoint(checkpoints / "round-0001.pt", model, cfg)
    signed = sign_model(key, unique_state(model), round=1, run="r", model_config=cfg.to_dict())
    write_signature(checkpoints / "round-0001.pt", signed)
    (checkpoints / "round-0001.old.pt").write_bytes((checkpoints / "round-0001.pt").read_bytes())
    save_checkpoint(checkpoints / "round-0002.pt", model, cfg)
    (checkpoints / "round-0002.pt.sig").write_text(json.dumps({**signed, "key": ["a", "list"]}))
    (root / "pki_used").mkdir()
    (root / "pki_used" / "ca.pem").write_text("x\n")
    return root


# ---------------------------------------------------------------------- the cases

def _cases() -> list[tuple[str, list[str], str]]:
    """(id, argv with {fx} for the fixture folder, a fragment the one error line must hold)."""
    out: list[tuple[str, list[str], str]] = []

    def case(name: str, fragment: str, *argv: str) -> None:
        out.append((name, list(argv), fragment))

    unc = ("uncertainty", "{fx}/slide.tiff", "--method", "tta", "--passes", "2")
    # slide info
    case("slide-info/missing-file", "missing.tiff", "slide", "info", "{fx}/missing.tiff")
    case("slide-info/not-a-slide", "a_file.txt", "slide", "info", "{fx}/a_file.txt")
    case("slide-info/empty-folder", "empty", "slide", "info", "{fx}/empty")
    # synth
    case("synth/out-is-a-file", "--out", "synth", "--out", "{fx}/a_file.txt", "--centres", "RUMC")
    case("synth/unknown-centre", "--centres", "synth", "--out", "{fx}/new", "--centres", "NOPE")
    case("synth/implausible-mpp", "--scan-mpp", "synth", "--out", "{fx}/new", "--scan-mpp", "-1")
    # train-central
    train = ("train-central", "--data", "{fx}/data", "--out", "{fx}/new.pt")
    case("train-central/config-latin1", "latin1.toml", *train, "--config", "{fx}/latin1.toml")
    case("train-central/config-wrong-type", "steps", *train, "--config", "{fx}/steps_many.toml")
    case("train-central/config-unknown-key", "stepz", *train, "--config", "{fx}/unknown_key.toml")
    case("train-central/config-is-a-folder", "empty", *train, "--config", "{fx}/empty")
    case("train-central/data-missing", "nodata", "train-central", "--data", "{fx}/nodata", "--out", "{fx}/new.pt")
    case("train-central/manifest-latin1", "manifest.json", "train-central", "--data", "{fx}/data_latin1",
         "--out", "{fx}/new.pt")
    case("train-central/device-unknown", "--device", *train, "--device", "banana")
    case("train-central/device-cuda-absent", "--device", *train, "--device", "cuda")
    case("train-central/out-is-a-folder", "--out", "train-central", "--data", "{fx}/data", "--out", "{fx}/empty")
    case("train-central/out-exists", "good.pt: exists", "train-central", "--data", "{fx}/data", "--out", "{fx}/good.pt")
    # evaluate
    evaluate = ("evaluate", "--data", "{fx}/data", "--model")
    case("evaluate/model-missing", "missing.pt", *evaluate, "{fx}/missing.pt")
    case("evaluate/model-without-model-config", "no_config.pt", *evaluate, "{fx}/no_config.pt")
    case("evaluate/model-config-wrong-type", "channels", *evaluate, "{fx}/config_type.pt")
    case("evaluate/model-without-state", "no_state.pt", *evaluate, "{fx}/no_state.pt")
    case("evaluate/model-bare-state-dict", "plain.pt", *evaluate, "{fx}/plain.pt")
    case("evaluate/model-text-file", "text.pt", *evaluate, "{fx}/text.pt")
    case("evaluate/model-is-a-folder", "empty", *evaluate, "{fx}/empty")
    case("evaluate/data-missing", "nodata", "evaluate", "--data", "{fx}/nodata", "--model", "{fx}/good.pt")
    case("evaluate/unknown-centre", "--centres", *evaluate, "{fx}/good.pt", "--centres", "NOPE")
    case("evaluate/device-cuda-absent", "--device", *evaluate, "{fx}/good.pt", "--device", "cuda")
    # demo: option and config checks only
    case("demo/config-latin1", "latin1.toml", "demo", "--config", "{fx}/latin1.toml", "--runs", "{fx}/runs")
    case("demo/config-wrong-type", "steps", "demo", "--config", "{fx}/steps_many.toml", "--runs", "{fx}/runs")
    case("demo/device-unknown", "--device", "demo", "--config", "{fx}/nofed.toml", "--runs", "{fx}/runs",
         "--device", "banana")
    case("demo/runs-is-a-file", "--runs", "demo", "--config", "{fx}/nofed.toml", "--runs", "{fx}/a_file.txt")
    # uncertainty
    case("uncertainty/slide-missing", "missing.tiff", "uncertainty", "{fx}/missing.tiff", "--model", "{fx}/good.pt",
         "--out", "{fx}/out")
    case("uncertainty/empty-folder", "empty", "uncertainty", "{fx}/empty", "--model", "{fx}/good.pt",
         "--out", "{fx}/out")
    case("uncertainty/out-is-a-file", "--out", *unc, "--model", "{fx}/good.pt", "--out", "{fx}/a_file.txt")
    case("uncertainty/workspace-is-a-file", "--workspace", *unc, "--model", "{fx}/good.pt", "--out", "{fx}/out",
         "--workspace", "{fx}/a_file.txt")
    case("uncertainty/model-missing", "missing.pt", *unc, "--model", "{fx}/missing.pt", "--out", "{fx}/out")
    case("uncertainty/model-without-model-config", "no_config.pt", *unc, "--model", "{fx}/no_config.pt",
         "--out", "{fx}/out")
    case("uncertainty/model-config-wrong-type", "channels", *unc, "--model", "{fx}/config_type.pt",
         "--out", "{fx}/out")
    case("uncertainty/model-folder-without-checkpoints", "--model", *unc, "--model", "{fx}/empty", "--out", "{fx}/out")
    case("uncertainty/device-unknown", "--device", *unc, "--model", "{fx}/good.pt", "--out", "{fx}/out",
         "--device", "banana")
    case("uncertainty/device-cuda-absent", "--device", *unc, "--model", "{fx}/good.pt", "--out", "{fx}/out",
         "--device", "cuda:0")
    # uncertainty-report
    report = ("uncertainty-report", "--data", "{fx}/data", "--model", "{fx}/good.pt")
    case("uncertainty-report/data-missing", "nodata", "uncertainty-report", "--data", "{fx}/nodata",
         "--model", "{fx}/good.pt", "--methods", "tta")
    case("uncertainty-report/unknown-method", "--methods", *report, "--methods", "bogus")
    case("uncertainty-report/model-without-model-config", "no_config.pt", "uncertainty-report", "--data", "{fx}/data",
         "--model", "{fx}/no_config.pt", "--methods", "tta")
    case("uncertainty-report/device-unknown", "--device", *report, "--device", "banana")
    case("uncertainty-report/edue-missing", "--edue", *report, "--edue", "{fx}/missing.pt", "--methods", "edue")
    # queue
    case("queue-list/workspace-missing", "--workspace", "queue", "list", "--workspace", "{fx}/ws_typo")
    case("queue-list/workspace-is-a-file", "--workspace", "queue", "list", "--workspace", "{fx}/a_file.txt")
    case("queue-list/workspace-without-queue", "--workspace", "queue", "list", "--workspace", "{fx}/empty")
    case("queue-list/queue-not-sqlite", "queue.db", "queue", "list", "--workspace", "{fx}/ws_badq")
    case("queue-list/queue-is-a-folder", "queue.db", "queue", "list", "--workspace", "{fx}/ws_dirq")
    case("queue-list/queue-empty-file", "queue.db", "queue", "list", "--workspace", "{fx}/ws_emptyq")
    case("queue-show/workspace-missing", "--workspace", "queue", "show", "--workspace", "{fx}/ws_typo", "1")
    case("queue-show/queue-not-sqlite", "queue.db", "queue", "show", "--workspace", "{fx}/ws_badq", "1")
    case("queue-show/unknown-item", "no item 99 in the queue of", "queue", "show", "--workspace", "{fx}/ws", "99")
    case("queue-reset-stale/workspace-missing", "--workspace", "queue", "reset-stale", "--workspace", "{fx}/ws_typo",
         "--older-than", "1")
    case("queue-reset-stale/queue-not-sqlite", "queue.db", "queue", "reset-stale", "--workspace", "{fx}/ws_badq",
         "--older-than", "1")
    case("queue-export/workspace-missing", "--workspace", "queue", "export", "--workspace", "{fx}/ws_typo",
         "--out", "{fx}/exported")
    case("queue-export/out-is-a-file", "--out", "queue", "export", "--workspace", "{fx}/ws", "--out", "{fx}/a_file.txt")
    case("queue-export/out-parent-missing", "--out", "queue", "export", "--workspace", "{fx}/ws",
         "--out", "{fx}/nowhere/exported")
    case("queue-import/workspace-missing", "--workspace", "queue", "import", "--workspace", "{fx}/ws_typo",
         "{fx}/ann.geojson")
    case("queue-import/queue-not-sqlite", "queue.db", "queue", "import", "--workspace", "{fx}/ws_badq",
         "{fx}/ann.geojson")
    case("queue-import/file-missing", "missing.geojson", "queue", "import", "--workspace", "{fx}/ws",
         "{fx}/missing.geojson")
    case("queue-import/file-is-a-folder", "empty", "queue", "import", "--workspace", "{fx}/ws", "{fx}/empty")
    case("queue-import/file-latin1", "ann_latin1.geojson", "queue", "import", "--workspace", "{fx}/ws",
         "{fx}/ann_latin1.geojson", "--slide", "s")
    case("queue-annotate/workspace-missing", "--workspace", "queue", "annotate", "--workspace", "{fx}/ws_typo",
         "--data", "{fx}/data")
    case("queue-annotate/data-missing", "nodata", "queue", "annotate", "--workspace", "{fx}/ws", "--data", "{fx}/nodata")
    select = ("queue", "select", "--method", "tta", "--selection", "random", "--budget", "2")
    case("queue-select/workspace-is-a-file", "--workspace", *select, "--workspace", "{fx}/a_file.txt",
         "--slides", "{fx}/empty", "--model", "{fx}/good.pt")
    case("queue-select/queue-not-sqlite", "queue.db", *select, "--workspace", "{fx}/ws_badq", "--slides", "{fx}/empty",
         "--model", "{fx}/good.pt")
    case("queue-select/queue-empty-file", "queue.db", *select, "--workspace", "{fx}/ws_emptyq", "--slides", "{fx}/empty",
         "--model", "{fx}/good.pt")
    case("queue-select/slides-missing", "--slides", *select, "--workspace", "{fx}/ws", "--slides", "{fx}/noslides",
         "--model", "{fx}/good.pt")
    case("queue-select/model-without-model-config", "no_config.pt", *select, "--workspace", "{fx}/ws",
         "--slides", "{fx}/empty", "--model", "{fx}/no_config.pt")
    case("queue-select/device-cuda-absent", "--device", *select, "--workspace", "{fx}/ws", "--slides", "{fx}/empty",
         "--model", "{fx}/good.pt", "--device", "cuda")
    # review (never serves: each case stops at its check)
    case("review/workspace-missing", "--workspace", "review", "--workspace", "{fx}/ws_typo", "--port", "0")
    case("review/workspace-is-a-file", "--workspace", "review", "--workspace", "{fx}/a_file.txt", "--port", "0")
    case("review/queue-not-sqlite", "queue.db", "review", "--workspace", "{fx}/ws_badq", "--port", "0")
    case("review/slides-missing", "--slides", "review", "--workspace", "{fx}/ws", "--slides", "{fx}/noslides",
         "--port", "0")
    case("review-add-user/workspace-missing", "--workspace", "review", "add-user", "--workspace", "{fx}/ws_typo",
         "dr-a", "--password-stdin")
    case("review-users/queue-not-sqlite", "queue.db", "review", "users", "--workspace", "{fx}/ws_badq")
    case("review-add-token/workspace-missing", "--workspace", "review", "add-token", "--workspace", "{fx}/ws_typo",
         "dr-a")
    # simulate and experiment: config checks only
    case("simulate/config-latin1", "latin1.toml", "simulate", "--config", "{fx}/latin1.toml", "--runs", "{fx}/runs")
    case("simulate/federation-wrong-type", "local_steps", "simulate", "--config", "{fx}/fed_bad.toml",
         "--runs", "{fx}/runs")
    case("simulate/no-federation", "[federation]", "simulate", "--config", "{fx}/nofed.toml", "--runs", "{fx}/runs")
    case("simulate/device-unknown", "--device", "simulate", "--config", "{fx}/fed_bad.toml", "--runs", "{fx}/runs",
         "--device", "banana")
    case("simulate/runs-is-a-file", "--runs", "simulate", "--config", "{fx}/fed_bad.toml", "--runs", "{fx}/a_file.txt")
    case("experiment/federation-wrong-type", "local_steps", "experiment", "--config", "{fx}/fed_bad.toml",
         "--runs", "{fx}/runs")
    case("experiment/config-wrong-type", "steps", "experiment", "--config", "{fx}/steps_many.toml",
         "--runs", "{fx}/runs")
    case("experiment/runs-is-a-file", "--runs", "experiment", "--config", "{fx}/fed_bad.toml",
         "--runs", "{fx}/a_file.txt")
    # pki
    case("pki-init/dir-is-a-file", "--dir", "pki", "init-coordinator", "--dir", "{fx}/a_file.txt", "--names", "localhost")
    case("pki-init/keys-exist", "ca.pem", "pki", "init-coordinator", "--dir", "{fx}/pki_used", "--names", "localhost")
    case("pki-init/bad-name", "--names", "pki", "init-coordinator", "--dir", "{fx}/newpki", "--names", "not a host!")
    case("pki-node-keys/dir-is-a-file", "--dir", "pki", "node-keys", "--dir", "{fx}/a_file.txt", "--name", "umcu")
    case("pki-node-keys/bad-name", "--name", "pki", "node-keys", "--dir", "{fx}/keys", "--name", "../umcu")
    case("pki-fingerprint/missing", "missing.pem", "pki", "fingerprint", "{fx}/missing.pem")
    case("pki-fingerprint/folder", "empty", "pki", "fingerprint", "{fx}/empty")
    case("pki-fingerprint/not-a-key", "a_file.txt", "pki", "fingerprint", "{fx}/a_file.txt")
    case("pki-renew/nothing-there", "ca.pem", "pki", "renew", "--dir", "{fx}/empty")
    # site
    for command in ("status", "start"):
        case(f"site-{command}/config-latin1", "latin1.toml", "site", command, "--config", "{fx}/site/latin1.toml")
        case(f"site-{command}/config-wrong-type", "slides", "site", command, "--config", "{fx}/site/slides_type.toml")
        case(f"site-{command}/config-missing", "missing.toml", "site", command, "--config", "{fx}/site/missing.toml")
        case(f"site-{command}/unknown-device", "device", "site", command, "--config", "{fx}/site/device.toml")
        case(f"site-{command}/workspace-is-a-file", "ws_file", "site", command, "--config", "{fx}/site/ws_file.toml")
        case(f"site-{command}/queue-not-sqlite", "queue.db", "site", command, "--config", "{fx}/site/badq.toml")
    case("site-status/config-is-a-folder", "site", "site", "status", "--config", "{fx}/site")
    case("site-status/status-file-broken", "status.json", "site", "status", "--config", "{fx}/site/badstatus.toml")
    case("site-start/ca-not-a-certificate", "bad_ca.pem", "site", "start", "--config", "{fx}/site/bad_ca.toml")
    # server
    for command in ("sites", "runs", "checkpoints", "app-hash"):
        case(f"server-{command}/config-latin1", "latin1.toml", "server", command, "--config", "{fx}/coord/latin1.toml")
        case(f"server-{command}/config-wrong-type", "address", "server", command,
             "--config", "{fx}/coord/address_type.toml")
    case("server-sites/state-missing", "state", "server", "sites", "--config", "{fx}/coord/no_state.toml")
    case("server-runs/state-missing", "state", "server", "runs", "--config", "{fx}/coord/no_state.toml")
    case("server-checkpoints/state-missing", "state", "server", "checkpoints", "--config", "{fx}/coord/no_state.toml")
    case("server-checkpoints/federation-wrong-type", "num_rounds", "server", "checkpoints",
         "--config", "{fx}/coord/rounds_type.toml")
    case("server-app-hash/no-pyproject", "pyproject.toml", "server", "app-hash", "--config", "{fx}/coord/coordinator.toml")
    case("server-start/no-pyproject", "pyproject.toml", "server", "start", "--config", "{fx}/coord/coordinator.toml")
    case("server-enrol/key-missing", "missing.pub", "server", "enrol", "--config", "{fx}/coord/coordinator.toml",
         "{fx}/missing.pub", "--name", "umcu")
    case("server-enrol/key-is-a-folder", "empty", "server", "enrol", "--config", "{fx}/coord/coordinator.toml",
         "{fx}/empty", "--name", "umcu")
    # export
    case("export/model-without-model-config", "no_config.pt", "export", "--model", "{fx}/no_config.pt",
         "--format", "torchscript", "--out", "{fx}/m.ts")
    case("export/out-parent-missing", "nowhere", "export", "--model", "{fx}/good.pt", "--format", "torchscript",
         "--out", "{fx}/nowhere/m.ts")
    case("export/out-is-a-folder", "empty", "export", "--model", "{fx}/good.pt", "--format", "torchscript",
         "--out", "{fx}/empty")
    return out


CASES = _cases()


def _snapshot(*folders: Path) -> dict[str, tuple]:
    """Every path under the folders with its kind, size and modification time."""
    seen = {}
    for folder in folders:
        for path in folder.rglob("*"):
            st = path.lstat()
            seen[str(path)] = (path.is_dir(), 0 if path.is_dir() else st.st_size, 0 if path.is_dir() else st.st_mtime_ns)
    return seen


@pytest.fixture
def fresh_log_handlers():
    """The CLI adds its stderr log handler once per process; CliRunner swaps stderr per call, so
    each case starts without one (its log lines then land in its own stderr)."""
    logger = logging.getLogger("ugafl")
    kept = logger.handlers[:]
    logger.handlers.clear()
    yield
    logger.handlers[:] = kept


def _one_line(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert fragment in lines[0], (fragment, lines[0])


def test_at_least_sixty_cases_over_every_command():
    assert len(CASES) >= 60
    commands = {tuple(a for a in argv[:2] if not a.startswith("{")) for _, argv, _ in CASES}
    assert {c[0] for c in commands} >= {"slide", "synth", "train-central", "evaluate", "demo", "uncertainty",
                                       "uncertainty-report", "queue", "review", "simulate", "experiment", "pki",
                                       "site", "server", "export"}


@pytest.mark.parametrize("argv, fragment", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(fx, tmp_path, monkeypatch, fresh_log_handlers, argv,
                                                         fragment):
    from ugafl.cli.main import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))  # none of these may reach Flower
    args = [a.replace("{fx}", str(fx)) for a in argv]
    before = _snapshot(fx, tmp_path)
    result = CliRunner().invoke(cli, args, input="a long enough password\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("a traceback") from result.exception
    assert "Traceback" not in result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    _one_line(result.stderr, fragment)
    assert _snapshot(fx, tmp_path) == before, "the command wrote something"


@pytest.mark.parametrize("argv, fragment", [
    (["queue", "list", "--workspace", "{fx}/ws_typo"], "--workspace"),
    (["site", "status", "--config", "{fx}/site/latin1.toml"], "latin1.toml"),
], ids=["queue-list-missing-workspace", "site-status-latin1-config-in-the-C-locale"])
def test_the_console_script_too(fx, tmp_path, argv, fragment):
    """The installed `ugafl` in a fresh process (in the C locale, where Python's default text
    encoding may differ): the same one line, exit 2, nothing written."""
    before = _snapshot(fx, tmp_path)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run([str(UGAFL), *[a.replace("{fx}", str(fx)) for a in argv]], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    _one_line(done.stderr, fragment)
    assert _snapshot(fx, tmp_path) == before


def test_device_names_where_there_are_gpus(monkeypatch):
    """No GPU here: the CUDA side of --device with torch's answers replaced (two GPUs)."""
    from ugafl.common.errors import ConfigError
    from ugafl.common.model import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1", "--device") == torch.device("cuda:1")
    assert pick_device("CPU") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device 'cuda:2': this machine has 2 CUDA GPU\(s\)"):
        pick_device("cuda:2", "--device")
    with pytest.raises(ConfigError, match=r"^--device 'mps': not a device"):
        pick_device("mps", "--device")
