"""The packages' public surface: sorted, complete ``__all__`` and one-way imports."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("connectors", "fusion", "plugin")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            if info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


def _isort_key(name: str) -> tuple[int, str]:
    """ruff RUF022's order: SCREAMING_CASE constants, then CamelCase, then the rest."""
    if name.isupper() or (name.replace("_", "").isupper()):
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def _public_defs(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ) and not node.name.startswith("_"):
            names.add(node.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_module_has_sorted_complete_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported, key=_isort_key), f"{name}.__all__ is not in isort order"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names {symbol}, which it does not define"
    path = Path(module.__file__ or "")
    if path.name != "__init__.py":
        missing = _public_defs(path) - set(exported)
        assert not missing, f"{name} defines public {sorted(missing)} but leaves them out of __all__"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("connectors", "torch"),
        ("connectors", "fastapi"),
        ("connectors", "fusion"),
        ("fusion", "fastapi"),
        ("fusion", "plugin"),
    ],
)
def test_imports_point_one_way(package: str, forbidden: str) -> None:
    code = (
        f"import sys, pkgutil, importlib, {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, prefix='{package}.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m == '{forbidden}' or m.startswith('{forbidden}.')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, f"importing all of {package} loads {forbidden}: {proc.stderr[-800:]}"


def test_fusion_uses_only_connector_domain() -> None:
    offenders = []
    for path in (ROOT / "fusion").rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for mod in mods:
                if mod == "connectors" or (
                    mod.startswith("connectors.") and not mod.startswith("connectors.domain")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}: {mod}")
    assert not offenders, offenders


def test_typed_markers_shipped() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file()
