"""The package layout: imports only point down (read from the source, not by importing).

``data`` <- ``envs`` <- ``agents`` -> ``models``; ``evaluation`` uses those four;
``experiments`` uses everything; nothing imports ``experiments``, and nothing in the
package imports the studies (the scripts behind docs/ tables).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("data", "envs", "models", "agents", "evaluation", "experiments")

#: package -> the packages of ours it may import
ALLOWED = {
    "data": set(),
    "envs": {"data"},
    "models": set(),
    "agents": {"models"},
    "evaluation": {"data", "envs", "models", "agents"},
    "experiments": set(OURS),
}


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (lazy imports included)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", OURS)
def test_imports_point_down(package: str) -> None:
    bad = []
    for path in package_files(package):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_in_the_package_imports_the_studies() -> None:
    studies = ROOT / "experiments" / "studies"
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in OURS
        for path in package_files(package)
        if studies not in path.parents
        for name in imports_of(path)
        if name.startswith("experiments.studies")
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_wrong_import() -> None:
    """The AST reader catches both absolute and relative imports (the test can fail)."""
    bad = ROOT / "data" / "_layout_probe.py"
    bad.write_text("from experiments.config import TrainConfig\nfrom ..envs import EnvConfig\n")
    try:
        names = imports_of(bad)
    finally:
        bad.unlink()
    assert "experiments.config" in names and "envs" in names


def test_models_and_data_stay_light() -> None:
    """``models`` never imports gymnasium/SB3; ``envs`` and ``data`` never import torch."""
    rules = {"models": ("gymnasium", "stable_baselines3"), "envs": ("torch",), "data": ("torch",)}
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package, banned in rules.items()
        for path in package_files(package)
        for name in imports_of(path)
        if name.split(".")[0] in banned
    ]
    assert not bad, "\n".join(bad)
