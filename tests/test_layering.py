"""Layering (DESIGN.md, "Model families"): the import contracts of pyproject.toml hold, can fail, and no layer loads a
forbidden one at run time either.

import-linter reads the source (every ``import`` statement, those inside functions too); the run-time checks catch
what it cannot see: modules loaded by name (``importlib.import_module``, e.g. a registry discovering its plugins).
Each run-time check runs in a fresh interpreter so that modules imported by other tests cannot hide (or fake) a
dependency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

_LOADED = """
import importlib, json, pkgutil, sys
for name in {roots!r}:
    module = importlib.import_module(name)
    if {walk!r} and hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, name + "."):
            importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("robustdistill"))))
"""


def _loaded(roots: list[str], walk: bool) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _LOADED.format(roots=roots, walk=walk)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _offending(loaded: list[str], layers: list[str]) -> list[str]:
    prefixes = [f"robustdistill.{layer}" for layer in layers]
    return [m for m in loaded if any(m == p or m.startswith(p + ".") for p in prefixes)]


def _lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the project at ``project`` (its pyproject.toml and its robustdistill package)."""
    assert LINT_IMPORTS.exists(), "lint-imports is missing: install the dev extra (`make install`)"
    # PYTHONPATH first: the package analysed is the one under ``project``, not the installed (editable) one.
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env, capture_output=True, text=True)


# Layer -> (its packages, a submodule the walk must reach, the layers it may not load at run time): the contracts of
# pyproject.toml. Shadow training loads the trainers only when it trains (inside a function): the walk loads none.
RUNTIME = {
    "models-data": (["robustdistill.models", "robustdistill.data"], "robustdistill.data.split",
                    ["attacks", "audits", "reports", "trainers", "cli", "demo"]),
    "attacks": (["robustdistill.attacks"], "robustdistill.attacks.privacy.lira",
                ["audits", "reports", "trainers", "cli", "demo"]),
    "reports": (["robustdistill.reports"], "robustdistill.reports.markdown", ["attacks", "trainers", "cli", "demo"]),
    "trainers": (["robustdistill.trainers"], "robustdistill.trainers.ard", ["audits", "reports", "cli", "demo"]),
    "defenses": (["robustdistill.defenses"], "robustdistill.defenses.skd_cag", ["audits", "reports", "cli", "demo"]),
}


@pytest.mark.parametrize("layer", sorted(RUNTIME))
def test_layer_loads_no_forbidden_layer_at_run_time(layer: str) -> None:
    roots, submodule, forbidden = RUNTIME[layer]
    loaded = _loaded(roots, walk=True)
    assert submodule in loaded  # the walk reached the submodules
    assert _offending(loaded, forbidden) == []


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# One forbidden import per contract, written inside a function (a lazy import is still a dependency).
VIOLATIONS = {
    "models-data": ("data/__init__.py", "robustdistill.trainers"),
    "attacks": ("attacks/__init__.py", "robustdistill.audits"),
    "reports": ("reports/__init__.py", "robustdistill.attacks"),
    "trainers": ("trainers/__init__.py", "robustdistill.reports"),
    "defenses": ("defenses/__init__.py", "robustdistill.audits"),
}


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_import_contract_breaks_on_a_forbidden_import(tmp_path: Path, contract: str) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "robustdistill", tmp_path / "robustdistill", ignore=shutil.ignore_patterns("__pycache__"))
    relative, forbidden = VIOLATIONS[contract]
    with (tmp_path / "robustdistill" / relative).open("a") as handle:
        handle.write(f"\n\ndef _layering_violation() -> None:\n    import {forbidden}  # noqa: F401\n")
    result = _lint_imports(tmp_path)
    source = "robustdistill." + relative.removesuffix("/__init__.py").replace("/", ".")
    assert result.returncode == 1, result.stdout + result.stderr
    # The contract named breaks (others may too: a chain through the changed package counts for them).
    assert f"{_contract_names()[contract]} BROKEN" in result.stdout
    assert f"{source} -> {forbidden}" in result.stdout


def _contract_names() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def test_every_contract_has_a_violation_to_prove_it() -> None:
    assert sorted(_contract_names()) == sorted(VIOLATIONS)
