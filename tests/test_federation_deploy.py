"""The Flower app folder that `flwr run` sends (deploy/flower_app) names our components and
declares every run setting. The app on Flower's deployment engine, with kills and restarts, is
tested through the deployment kit in test_deployment_kit.py."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import tomllib

from ugafl.server.federation.settings import FederationSettings

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "flower_app"


def test_the_app_defaults_are_the_federation_settings() -> None:
    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert config["components"] == {"serverapp": "ugafl.server.flower_app:app",
                                    "clientapp": "ugafl.client.flower_app:app"}
    defaults = {f.name.replace("_", "-"): "" if f.default is MISSING else f.default for f in fields(FederationSettings)}
    assert config["config"] == defaults  # the three required paths default to "" (refused by the ServerApp)
