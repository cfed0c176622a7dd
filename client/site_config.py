"""A hospital's site configuration: the TOML file named by the SuperNode's
`--node-config site-config=PATH` (see deploy/hospital/site.toml). Sections: [site] (what the
ClientApp needs) and, for the site daemon, [coordinator], [review] and [daemon]. Each is a typed
model; a wrong key or value is one ConfigError naming the file, the section and the key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from ugafl.client.round.annotators import annotator_names, needs_data
from ugafl.common.config_base import (ConfigModel, FieldProblem, HostPort, NonEmpty, Port, one_of, read_sections,
                                      validate, where)

ROLES = ("site", "central")
SECTIONS = ("site", "coordinator", "review", "daemon")


def _app_digest(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("expected the SHA-256 hex digest of an app bundle "
                         "(`ugafl server app-hash` prints the coordinator's)")
    return value


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    return value


class SiteSection(ConfigModel):
    """[site]; paths are relative to the file's folder."""

    workspace: NonEmpty
    slides: NonEmpty  # the inbox of unlabelled slides (read only)
    trusted_keys: Annotated[tuple[NonEmpty, ...], Field(min_length=1)]  # coordinators' public keys
    role: Annotated[str, one_of(ROLES)] = "site"
    central_data: NonEmpty | None = None
    central_centre: NonEmpty = "RUMC"
    annotator: Annotated[str, one_of(annotator_names)] = "person"
    annotator_data: NonEmpty | None = None
    train: bool = True
    retrain: bool = False
    device: Annotated[str, AfterValidator(_device)] = "auto"
    name: str = ""
    approved_apps: tuple[Annotated[str, AfterValidator(_app_digest)], ...] = ()

    def check(self) -> None:
        if self.role == "central" and self.central_data is None:
            raise FieldProblem("central_data", "role 'central' needs central_data (a dataset folder)")
        if needs_data(self.annotator) and self.annotator_data is None:
            raise FieldProblem("annotator_data", f"annotator '{self.annotator}' needs annotator_data (a folder it reads)")


class CoordinatorSection(ConfigModel):
    """[coordinator]: where the site daemon's SuperNode connects; paths relative to the file."""

    address: HostPort
    ca: NonEmpty  # the coordinator's CA certificate
    node_key: NonEmpty  # the SuperNode's private key


class ReviewSection(ConfigModel):
    """[review]: the pathologists' review app: where it listens, how it knows who reviews
    (`auth`: local, proxy or accounts; see client/review/auth.py), and how a proxy serves it."""

    host: NonEmpty = "127.0.0.1"
    port: Port = 8765
    auth: Annotated[str, one_of(("local", "proxy", "accounts"))] = "local"
    user_header: NonEmpty = "X-Remote-User"  # auth = "proxy": the header naming the user
    trusted_proxies: tuple[NonEmpty, ...] = ("127.0.0.1",)  # auth = "proxy": whose header is believed
    host_names: tuple[NonEmpty, ...] = ()  # names browsers or the proxy use for the app (Host header)
    url_prefix: str = ""  # the path the app is served under behind a proxy, e.g. "/review"

    def command_options(self) -> list[str]:
        """These settings as `ugafl review` options."""
        out = ["--host", self.host, "--port", str(self.port), "--auth", self.auth, "--user-header", self.user_header]
        out += [f"--trusted-proxy={p}" for p in self.trusted_proxies] + [f"--host-name={h}" for h in self.host_names]
        return out + ([f"--url-prefix={self.url_prefix}"] if self.url_prefix else [])


class DaemonSection(ConfigModel):
    """[daemon]: the SuperNode's local API port and how often the inbox is scanned, s."""

    runtime_port: Port = 9094
    inbox_poll_s: Annotated[float, Field(gt=0)] = 30.0


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
    train: bool = True  # takes part in training (a central site that doesn't votes for the global model as it is)
    retrain: bool = False  # train every round on all corrected patches, even when none is new (keeps its vote)
    device: str = "auto"
    name: str = ""  # the hospital's name, for its own logs and status
    approved_apps: tuple[str, ...] = ()  # SHA-256 of the Flower app bundles (FABs) this site runs (see app_gate)
    coordinator: CoordinatorSection | None = None  # the daemon's sections (None: no [coordinator])
    review: ReviewSection = field(default_factory=ReviewSection)
    daemon: DaemonSection = field(default_factory=DaemonSection)

    @staticmethod
    def load(path: str | Path) -> SiteConfig:
        """The site config at `path`; ConfigError naming the file, section and key if it is wrong."""
        path = Path(path)
        raw = read_sections(path, "site config", SECTIONS, required=("site",))
        site = validate(SiteSection, raw["site"], where(path, "site"))
        base = path.parent

        def resolve(value: str | None) -> Path | None:
            return None if value is None else (base / value).resolve()

        coordinator = (validate(CoordinatorSection, raw["coordinator"], where(path, "coordinator"))
                       if "coordinator" in raw else None)
        return SiteConfig(workspace=resolve(site.workspace), slides=resolve(site.slides),
                          trusted_keys=tuple(resolve(k) for k in site.trusted_keys), role=site.role,
                          central_data=resolve(site.central_data), central_centre=site.central_centre,
                          annotator=site.annotator, annotator_data=resolve(site.annotator_data), train=site.train,
                          retrain=site.retrain,
                          device=site.device, name=site.name, approved_apps=site.approved_apps, coordinator=coordinator,
                          review=validate(ReviewSection, raw.get("review", {}), where(path, "review")),
                          daemon=validate(DaemonSection, raw.get("daemon", {}), where(path, "daemon")))
