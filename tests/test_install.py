"""An install that fits the user: `pip install ugafl` (a hospital or coordinator) brings neither
Ray nor imagecodecs; `ugafl[simulation]` (a researcher) adds them. Product code must not need them
(every import, lazy ones inside functions included), and a simulation run without the extra stops
with one line naming it, exit code 2, before any work."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PRODUCT = ("common", "client", "server", "cli")
SIM_ONLY = ("ray", "imagecodecs")
INSTALL = "pip install 'ugafl[simulation]'"


def _requirement(spec: str) -> tuple[str, set[str]]:
    """('flwr', {'simulation'}) for 'flwr[simulation]==1.41.0'."""
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", spec)
    assert m, spec
    return m.group(1).lower().replace("_", "-"), {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}


def _requirements(specs: list[str]) -> dict[str, set[str]]:
    return dict(_requirement(s) for s in specs)


def test_base_install_has_no_simulation_packages():
    base = _requirements(PYPROJECT["project"]["dependencies"])
    assert "ray" not in base and "imagecodecs" not in base
    assert base.get("flwr") == set(), "the base install takes plain flwr, not flwr[simulation]"
    assert "torch==2.13.0" in PYPROJECT["project"]["dependencies"], "torch stays pinned (else CUDA wheels)"


def test_simulation_extra_brings_them():
    extras = PYPROJECT["project"]["optional-dependencies"]
    sim = _requirements(extras["simulation"])
    assert "simulation" in sim["flwr"] and "imagecodecs" in sim
    assert "dev" in extras


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file at any depth, and of
    importlib.import_module / __import__ calls with a literal name."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            out.append((node.lineno, node.args[0].value))
    return out


def test_product_code_imports_no_simulation_package():
    files = [p for folder in PRODUCT for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 20
    bad = [f"{p.relative_to(ROOT)}:{line} imports {module}" for p in files for line, module in _imports(p)
           if any(module == s or module.startswith(s + ".") for s in SIM_ONLY)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("command", [["simulate", "--config", "configs/demo.toml"],
                                     ["demo", "--config", "configs/demo.toml"],
                                     ["experiment", "--config", "simulations/configs/quick.toml"]])
def test_simulation_without_ray_names_the_extra(command, tmp_path, monkeypatch):
    from ugafl.cli.main import cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setitem(sys.modules, "ray", None)  # find_spec answers None, as in a base install
    result = CliRunner().invoke(cli, [*command, "--runs", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert INSTALL in result.output and "ray" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*.tif*")) and not list(tmp_path.rglob("*.pt"))  # failed before any work


def test_slide_writer_without_imagecodecs_names_the_extra(tmp_path, monkeypatch):
    from ugafl.simulations.extra import MissingExtraError
    from ugafl.simulations.slide_writer import write_slide

    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    with pytest.raises(MissingExtraError, match=re.escape(INSTALL)):
        write_slide(tmp_path / "s.tiff", np.zeros((512, 512, 3), np.uint8), 0.5, "tiff", 80)
    assert not list(tmp_path.iterdir())
