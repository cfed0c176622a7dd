"""A hospital's site configuration: the TOML file named by the SuperNode's
`--node-config site-config=PATH` (see deploy/hospital/site.toml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ugafl.client.round.annotators import annotator_names
from ugafl.common.config import read_toml
from ugafl.common.errors import ConfigError

ROLES = ("site", "central")


@dataclass(frozen=True)
class SiteConfig:
    """A site's settings. Relative paths are relative to the file's folder."""

    workspace: Path
    slides: Path  # the inbox of unlabelled slides (read only)
    trusted_keys: tuple[Path, ...]  # public keys of coordinators whose models this site runs
    role: str = "site"  # "central": trains on its own labelled data every round (RUMC)
    central_data: Path | None = None  # role central: dataset folder with manifest.json
    central_centre: str = "RUMC"
    annotator: str = "person"  # who corrects the queue; plug-ins add others (simulations: "simulated")
    annotator_data: Path | None = None  # what a plug-in annotator reads (the simulated one: the dataset)
    train: bool = True  # takes part in training
    device: str = "auto"
    name: str = ""  # the hospital's name, for its own logs and status
    approved_apps: tuple[str, ...] = ()  # SHA-256 of the Flower app bundles (FABs) this site runs (see app_gate)
    extra: dict = field(default_factory=dict)

    @staticmethod
    def load(path: str | Path) -> SiteConfig:
        path = Path(path)
        raw = read_toml(path, "site config")
        site = raw.get("site", raw)
        base = path.parent

        def need_path(key: str, optional: bool = False) -> Path | None:
            value = site.get(key)
            if value is None:
                if optional:
                    return None
                raise ConfigError(f"{path}: [site] {key} is missing")
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: [site] {key} must be a path, got {value!r}")
            return (base / value).resolve()

        keys = site.get("trusted_keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"{path}: [site] trusted_keys must list at least one public key file")
        role = site.get("role", "site")
        if role not in ROLES:
            raise ConfigError(f"{path}: [site] role must be one of {', '.join(ROLES)}, got {role!r}")
        annotator = site.get("annotator", "person")
        if annotator not in annotator_names():
            raise ConfigError(f"{path}: [site] annotator must be one of {', '.join(annotator_names())}, got {annotator!r}")
        apps = site.get("approved_apps", [])
        if not isinstance(apps, list) or not all(isinstance(a, str) and re.fullmatch(r"[0-9a-f]{64}", a) for a in apps):
            raise ConfigError(f"{path}: [site] approved_apps must list SHA-256 hex digests of app bundles "
                              "(`ugafl server app-hash` prints the coordinator's)")
        cfg = SiteConfig(workspace=need_path("workspace"), slides=need_path("slides"),
                         trusted_keys=tuple((base / k).resolve() for k in keys), role=role,
                         central_data=need_path("central_data", optional=True),
                         central_centre=str(site.get("central_centre", "RUMC")), annotator=annotator,
                         annotator_data=need_path("annotator_data", optional=True), train=bool(site.get("train", True)),
                         device=str(site.get("device", "auto")), name=str(site.get("name", "")),
                         approved_apps=tuple(apps))
        if role == "central" and cfg.central_data is None:
            raise ConfigError(f"{path}: [site] role 'central' needs central_data (a dataset folder)")
        if annotator == "simulated" and cfg.annotator_data is None:
            raise ConfigError(f"{path}: [site] annotator 'simulated' needs annotator_data (a dataset folder)")
        return cfg
