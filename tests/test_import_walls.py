"""The walls of the house (DESIGN.md), checked on every import of every module, lazy ones inside
functions included: `common` knows neither side nor the simulator, `client` and `server` never
import each other, product code never imports `simulations`, and only the Flower glue imports `flwr`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"common": "common", "client": "client", "server": "server", "simulations": "simulations", "cli": "cli"}
# The only modules that may import flwr: the two apps, the site's app gate and the coordinator's
# tooling (the simulation runs Flower's engine through the ServerApp module's `simulate`).
FLOWER_GLUE = {"client/flower_app.py", "server/flower_app.py", "client/app_gate.py", "server/coordinator.py"}
# package -> packages of ours it must not import
FORBIDDEN = {
    "common": {"client", "server", "simulations", "cli"},
    "client": {"server", "simulations", "cli"},
    "server": {"client", "simulations", "cli"},
}


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(("ugafl", *path.relative_to(root).parent.parts))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def ours(module: str) -> str | None:
    """The top folder of one of our modules (`ugafl.client.x` -> `client`), else None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ugafl" and parts[1] in PACKAGES else None


def all_modules(root: Path = ROOT, folders=tuple(PACKAGES.values())) -> list[Path]:
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py"))


def violations(root: Path = ROOT, folders=tuple(PACKAGES.values())) -> list[str]:
    found = []
    for path in all_modules(root, folders):
        rel = path.relative_to(root).as_posix()
        top = rel.split("/")[0]
        for line, module in imports_of(path, root):
            target = ours(module)
            if target in FORBIDDEN.get(top, set()):
                found.append(f"{rel}:{line}: {top} imports {module}")
            if module.split(".")[0] == "flwr" and rel not in FLOWER_GLUE:
                found.append(f"{rel}:{line}: imports {module} outside the Flower glue")
    return sorted(set(found))


def test_walls_hold():
    assert violations() == []


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a lazy import inside a function and a relative import are both found."""
    fake = tmp_path / "common"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from ugafl.client import x\n    from ..server import y\n"
                                 "    import flwr.app\n")
    found = violations(tmp_path, ("common",))
    assert any("imports ugafl.client" in v for v in found)
    assert any("imports ugafl.server" in v for v in found)
    assert any("flwr.app outside the Flower glue" in v for v in found)


@pytest.mark.parametrize("folder", sorted(PACKAGES.values()))
def test_every_package_is_scanned(folder):
    assert any(p.relative_to(ROOT).parts[0] == folder for p in all_modules())
