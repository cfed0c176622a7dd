"""Every config kind is read through typed models with one spelling per key: the run config
(configs/demo.toml, simulations/configs/*.toml), a site's site.toml, the coordinator's
coordinator.toml and the Flower run config. An unknown key or a wrong type is one ConfigError
naming the file, the section and the key; the shipped examples all load; the CLI turns the error
into one line and exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ugafl.client.site_config import SiteConfig
from ugafl.common.config import load_config
from ugafl.common.errors import ConfigError
from ugafl.server.coordinator import CoordinatorConfig
from ugafl.server.federation.settings import FederationSettings
from ugafl.simulations.experiment import ExperimentConfig
from ugafl.simulations.federated import federation_settings
from ugafl.simulations.synth import SynthConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.toml"
SITE = '[site]\nworkspace = "ws"\nslides = "inbox"\ntrusted_keys = ["keys/coordinator.pub"]\n'
COORDINATOR = '[coordinator]\nstate = "state"\npki = "pki"\napp = "app"\naddress = "127.0.0.1:9092"\n'


def refused(call, file: Path, section: str, key: str, problem: str) -> None:
    """`call()` raises ConfigError whose whole message is `FILE [section] key: problem...`."""
    with pytest.raises(ConfigError) as error:
        call()
    expected = f"{file} [{section}] {key}: {problem}"
    assert str(error.value).startswith(expected), f"{error.value}\n  does not start with\n{expected}"


def run_config(tmp_path: Path, old: str, new: str) -> Path:
    """The demo config with one line changed, as tmp/demo.toml."""
    text = DEMO.read_text()
    assert old in text
    path = tmp_path / "demo.toml"
    path.write_text(text.replace(old, new))
    return path


# ---------------------------------------------------------------------- the run config

@pytest.mark.parametrize("old, new, section, key, problem", [
    ("steps = 1200", 'steps = "x"', "train", "steps", "expected an integer, got 'x'"),
    ("steps = 1200", "steps = true", "train", "steps", "expected an integer, got True"),
    ("steps = 1200", "steps = 12.5", "train", "steps", "expected an integer, got 12.5"),
    ("steps = 1200", "stepz = 1200", "train", "stepz", "unknown key (did you mean steps?); known: steps,"),
    ("lr = 0.002", "lr = false", "train", "lr", "expected a number, got False"),
    ("crop = 128", "crop = 128\nloss = 'l2'", "train", "loss", "expected 'dice-ce' or 'batch-dice-ce', got 'l2'"),
    ('arch = "unet"', 'arch = "resnet"', "model", "arch", "expected 'unet' or 'dynunet', got 'resnet'"),
    ("mpp = 2.0", 'mpp = "2"', "model", "mpp", "expected a number, got '2'"),
    ("patch_size = 256", "patch_sise = 256", "model", "patch_sise", "unknown key (did you mean patch_size?)"),
    ("tumour_fraction = 0.5", "tumour_fraction = 1.5", "central", "tumour_fraction", "expected at most 1, got 1.5"),
    ("patches_per_slide = 240", "patches = 240", "central", "patches", "unknown key"),
    ('split = "test"', 'split = "validation"', "evaluate", "split", "expected 'train' or 'test', got 'validation'"),
])
def test_a_run_config_section_names_file_section_and_key(tmp_path: Path, old: str, new: str, section: str,
                                                          key: str, problem: str) -> None:
    path = run_config(tmp_path, old, new)
    refused(lambda: load_config(path), path, section, key, problem)


@pytest.mark.parametrize("old, new, key, problem", [
    ("local_steps = 100", 'local_steps = "many"', "local_steps", "expected an integer, got 'many'"),
    ("local_steps = 100", "local_steps = 0", "local_steps", "expected at least 1, got 0"),
    ("lr = 0.001", "lr = true", "lr", "expected a number, got True"),
    ('aggregation = "fedavg"', 'strategy = "fedavg"', "strategy", "unknown key; use aggregation"),
    ('aggregation = "fedavg"', 'aggregation = "krum"', "aggregation",
     "expected one of fedavg, fedprox, fedmedian, fedtrimmedavg, got 'krum'"),
    ('selection = "stochastic-batch"', 'selection = "best"', "selection", "expected one of "),
    ('weighting = "sites"', 'weighting = "votes"', "weighting", "expected one of examples, sites, got 'votes'"),
    ("local_steps = 100", "local-steps = 100", "local-steps", "spell it local_steps (keys in files use '_')"),
    ("cpus_per_site = 1", 'cpus_per_site = "one"', "cpus_per_site", "expected a number, got 'one'"),
])
def test_the_federation_section_of_a_run_config_names_file_section_and_key(tmp_path: Path, old: str, new: str,
                                                                            key: str, problem: str) -> None:
    path = run_config(tmp_path, old, new)
    cfg = load_config(path)  # [federation] belongs to the federation: checked by its settings
    refused(lambda: federation_settings(cfg), path, "federation", key, problem)


@pytest.mark.parametrize("old, new, section, key, problem", [
    ("slides_per_centre = 6", "slides_per_centre = 6.0", "data", "slides_per_centre", "expected an integer, got 6.0"),
    ("seed = 0\ncentres", "sead = 0\ncentres", "data", "sead", "unknown key (did you mean seed?)"),
    ("selections = [", "strategies = [", "experiment", "strategies", "unknown key; use selections"),
    ('"top-k", "stochastic-batch"]', '"top-k", "best"]', "experiment", "selections[2]", "expected one of "),
    ("seeds = [0, 1, 2]", 'seeds = [0, "1"]', "experiment", "seeds[1]", "expected an integer, got '1'"),
    ("patches = [5, 10]", "patches = [5, 12]", "experiment", "patches", "[5, 12] must be multiples of budget (5)"),
    ("pooled_reference = true", 'pooled_reference = "yes"', "experiment", "pooled_reference",
     "expected true or false, got 'yes'"),
])
def test_the_simulation_sections_name_file_section_and_key(tmp_path: Path, old: str, new: str, section: str,
                                                           key: str, problem: str) -> None:
    text = (REPO / "simulations/configs/paper.toml").read_text()
    assert old in text
    path = tmp_path / "paper.toml"
    path.write_text(text.replace(old, new, 1))
    cfg = load_config(path)
    cls = {"data": SynthConfig, "experiment": ExperimentConfig}[section]
    refused(lambda: cfg.section(cls, section), path, section, key, problem)


def test_several_wrong_keys_are_one_message_and_unknown_sections_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nsteps = "x"\nbatch_size = 0\nstepz = 3\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert re.fullmatch(rf"{re.escape(str(path))} \[train\] steps: expected an integer, got 'x'; "
                        r"batch_size: expected at least 1, got 0; stepz: unknown key \(did you mean steps\?\); known: .*",
                        str(error.value)), str(error.value)
    path.write_text("[run]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown section\(s\) run; known: data, model"):
        load_config(path)
    path.write_text("train = 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: train must be a section \(\[train\]\), got 3$"):
        load_config(path)


def test_a_good_run_config_loads_with_its_values(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[model]\narch = "dynunet"\nmpp = 1\nchannels = [4, 8]\n[train]\nsteps = 7\nlr = 1\n'
                    '[central]\ncentre = "UMCU"\n[evaluate]\nsplit = "train"\n'
                    '[federation]\nlocal_steps = 3\ncpus_per_site = 2\n[data]\ncentres = ["UMCU"]\n')
    cfg = load_config(path)
    assert (cfg.model.arch, cfg.model.mpp, cfg.model.channels) == ("dynunet", 1.0, (4, 8))
    assert isinstance(cfg.model.mpp, float) and isinstance(cfg.train.lr, float)  # an integer is a number
    assert (cfg.train.steps, cfg.train.lr, cfg.train.batch_size) == (7, 1.0, 16)  # the rest: defaults
    assert (cfg.central.centre, cfg.central.patches_per_slide, cfg.evaluate.split) == ("UMCU", 240, "train")
    settings, options = federation_settings(cfg, central_checkpoint="c.pt", out_dir="out", signing_key="k")
    assert (settings.local_steps, settings.central_checkpoint, settings.num_rounds, options.cpus_per_site) == (
        3, "c.pt", 3, 2.0)
    assert cfg.section(SynthConfig, "data").centres == ("UMCU",)
    assert cfg.section(ExperimentConfig, "experiment") == ExperimentConfig()  # absent: the defaults


@pytest.mark.parametrize("config", [DEMO, *sorted((REPO / "simulations/configs").glob("*.toml"))],
                         ids=lambda p: p.name)
def test_every_shipped_run_config_loads(config: Path) -> None:
    cfg = load_config(config)
    raw = cfg.raw
    assert cfg.model.channels == tuple(raw["model"].get("channels", (16, 32, 64, 128, 256)))
    assert cfg.train.steps == raw["train"]["steps"] and cfg.central.centre == raw["central"].get("centre", "RUMC")
    settings, options = federation_settings(cfg)
    assert settings.local_steps == raw["federation"]["local_steps"]
    assert options.cpus_per_site == raw["federation"]["cpus_per_site"]
    assert cfg.section(SynthConfig, "data").slides_per_centre == raw["data"]["slides_per_centre"]
    if "experiment" in raw:
        assert cfg.section(ExperimentConfig, "experiment").patches == tuple(raw["experiment"]["patches"])


# ---------------------------------------------------------------------- the Flower run config

def test_the_flower_run_config_takes_either_spelling_of_a_key_once() -> None:
    paths = {"central-checkpoint": "c.pt", "out_dir": "out", "signing-key": "k"}
    settings = FederationSettings.from_run_config({**paths, "local-steps": 7, "num_rounds": 2})
    assert (settings.local_steps, settings.num_rounds, settings.out_dir) == (7, 2, "out")
    with pytest.raises(ConfigError, match="^run config local_steps: given twice, as 'local-steps' and 'local_steps'$"):
        FederationSettings.from_run_config({**paths, "local-steps": 7, "local_steps": 8})
    with pytest.raises(ConfigError, match="^run config local-steps: expected an integer, got '7'$"):
        FederationSettings.from_run_config({**paths, "local-steps": "7"})
    with pytest.raises(ConfigError, match="^run config strategy: unknown key; use aggregation$"):
        FederationSettings.from_run_config({**paths, "strategy": "fedavg"})
    with pytest.raises(ConfigError, match="^run config central-checkpoint: expected a non-empty string, got ''$"):
        FederationSettings.from_run_config({**paths, "central-checkpoint": ""})  # the app's default: required


# ---------------------------------------------------------------------- a site's config

def site_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, section, key, problem", [
    ("traine = true\n", "site", "traine", "unknown key (did you mean train?)"),
    ('train = "yes"\n', "site", "train", "expected true or false, got 'yes'"),
    ('annotator = "robot"\n', "site", "annotator", "expected one of person, "),
    ('approved_apps = ["abc"]\n', "site", "approved_apps[0]", "expected the SHA-256 hex digest of an app bundle"),
    ("trusted_keys = []\n", "site", "trusted_keys", "expected at least 1 item(s), got ()"),
    ('[review]\nport = "8765"\n', "review", "port", "expected an integer, got '8765'"),
    ("[review]\nport = 70000\n", "review", "port", "expected at most 65535, got 70000"),
    ("[daemon]\ninbox_poll = 30\n", "daemon", "inbox_poll", "unknown key (did you mean inbox_poll_s?)"),
    ('[coordinator]\naddress = "fl.example.org"\nca = "ca.pem"\nnode_key = "k"\n', "coordinator", "address",
     "expected host:port, got 'fl.example.org'"),
    ('[coordinator]\naddress = "fl.example.org:9092"\nca = "ca.pem"\n', "coordinator", "node_key", "is required"),
])
def test_a_site_config_names_file_section_and_key(tmp_path: Path, extra: str, section: str, key: str,
                                                  problem: str) -> None:
    if extra.startswith("trusted_keys"):  # instead of the good one
        extra = SITE.replace('trusted_keys = ["keys/coordinator.pub"]\n', extra)
    else:
        extra = SITE + extra
    path = site_file(tmp_path, extra)
    refused(lambda: SiteConfig.load(path), path, section, key, problem)


def test_a_good_site_config_loads_with_paths_relative_to_its_folder(tmp_path: Path) -> None:
    path = site_file(tmp_path, SITE + 'role = "central"\ncentral_data = "../data"\ntrain = false\nname = "umcu"\n'
                     '[review]\nport = 9000\n[daemon]\ninbox_poll_s = 2\n')
    site = SiteConfig.load(path)
    assert site.workspace == (tmp_path / "ws").resolve() and site.slides == (tmp_path / "inbox").resolve()
    assert site.trusted_keys == ((tmp_path / "keys" / "coordinator.pub").resolve(),)
    assert site.central_data == (tmp_path.parent / "data").resolve() and site.role == "central"
    assert (site.train, site.name, site.annotator, site.review.port, site.review.host) == (
        False, "umcu", "person", 9000, "127.0.0.1")
    assert site.daemon.inbox_poll_s == 2.0 and site.coordinator is None
    path.write_text(SITE.replace("[site]", "[sit]"))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) sit; known: site, coordinator, review, daemon"):
        SiteConfig.load(path)


def test_the_shipped_site_config_loads_without_its_folders() -> None:
    from ugafl.client.daemon.site_daemon import SiteDaemonConfig

    path = REPO / "deploy" / "hospital" / "site.toml"
    daemon = SiteDaemonConfig.load(path)
    assert daemon.site.workspace == Path("/var/lib/ugafl/workspace") and daemon.site.name == "umcu"
    assert daemon.coordinator == "fl.example.org:9092" and daemon.ca == path.parent / "ca.pem"
    assert (daemon.review_port, daemon.runtime_port, daemon.inbox_poll_s) == (8765, 9094, 30.0)


# ---------------------------------------------------------------------- the coordinator's config

@pytest.mark.parametrize("extra, section, key, problem", [
    ("ports = 9092\n", "coordinator", "ports", "unknown key (did you mean port?)"),
    ('port = "9092"\n', "coordinator", "port", "expected an integer, got '9092'"),
    ("[federation]\nnum_rounds = 2.5\n", "federation", "num_rounds", "expected an integer, got 2.5"),
    ('[federation]\nstrategy = "fedavg"\n', "federation", "strategy", "unknown key; use aggregation"),
    ("[federation]\nnum-rounds = 2\n", "federation", "num-rounds", "spell it num_rounds"),
    ("[federation]\ncpus_per_site = 1\n", "federation", "cpus_per_site", "unknown key"),
])
def test_a_coordinator_config_names_file_section_and_key(tmp_path: Path, extra: str, section: str, key: str,
                                                         problem: str) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(COORDINATOR + extra)
    refused(lambda: CoordinatorConfig.load(path), path.resolve(), section, key, problem)


def test_a_good_coordinator_config_loads_and_gives_the_run_settings(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(COORDINATOR + 'port = 9100\n[federation]\ncentral_checkpoint = "central.pt"\nnum_rounds = 4\n'
                    'timeout_s = 900\n')
    cfg = CoordinatorConfig.load(path)
    assert (cfg.state, cfg.pki, cfg.port, cfg.host) == (tmp_path / "state", tmp_path / "pki", 9100, "0.0.0.0")
    settings = cfg.run_settings(num_rounds=6)
    assert settings.central_checkpoint == str(tmp_path / "central.pt") and settings.num_rounds == 6
    assert settings.out_dir == str(tmp_path / "state" / "checkpoints") and settings.timeout_s == 900.0
    assert settings.signing_key == str(tmp_path / "pki" / "model-signing.key")
    path.write_text(COORDINATOR.replace('app = "app"\n', ""))
    refused(lambda: CoordinatorConfig.load(path), path, "coordinator", "app", "is required")


def test_the_shipped_coordinator_config_loads_without_its_folders() -> None:
    cfg = CoordinatorConfig.load(REPO / "deploy" / "coordinator" / "coordinator.toml")
    settings = cfg.run_settings()
    assert cfg.state == Path("/var/lib/ugafl/coordinator") and cfg.address == "fl.example.org:9092"
    assert (settings.num_rounds, settings.timeout_s, settings.run_name) == (5, 86400.0, "lymph-node-2027")
    assert settings.central_checkpoint == "/var/lib/ugafl/central.pt"


# ---------------------------------------------------------------------- the CLI

def test_the_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    from ugafl.cli.main import cli

    run = run_config(tmp_path, "steps = 1200", "steps = 'many'")
    coordinator = tmp_path / "coordinator.toml"
    coordinator.write_text(COORDINATOR + "[federation]\nlocal_steps = 'many'\n")
    for args, message in [(["experiment", "--config", str(run)], f"{run} [train] steps: expected an integer, got 'many'"),
                          (["server", "sites", "--config", str(coordinator)],
                           f"{coordinator} [federation] local_steps: expected an integer, got 'many'")]:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: {message}\n"


@pytest.mark.parametrize("key", ["out_dir", "min_nodes", "central_checkpoint"])
def test_a_simulation_refuses_federation_keys_it_sets_itself(tmp_path, key):
    from ugafl.common.config import load_config
    from ugafl.simulations.federated import federation_settings

    path = tmp_path / "sim.toml"
    path.write_text(f'[federation]\nnum_rounds = 1\n{key} = {"2" if key == "min_nodes" else chr(34) + "x" + chr(34)}\n')
    with pytest.raises(ConfigError, match=rf"sim.toml \[federation\] {key}: set by the simulation itself"):
        federation_settings(load_config(path))


def test_the_run_config_the_coordinator_passes_to_flower_reads_back_as_the_same_settings() -> None:
    from flwr.common.config import parse_config_args

    from ugafl.server.coordinator import _run_config
    from ugafl.server.federation.settings import FederationSettings

    for changes in ({}, {"gate": False, "lr": 1e-4, "tumour_reserve": 0.4, "patch_scoring": "paper"}):
        settings = FederationSettings(central_checkpoint="/c.pt", out_dir="/out", signing_key="/k", **changes)
        parsed = parse_config_args([_run_config(settings)])  # Flower's own reading of `flwr run --run-config`
        assert FederationSettings.from_run_config(parsed) == settings
