"""Layering: the attack harnesses, models and data never load the audit, report, trainer or CLI layers.

Each check runs in a fresh interpreter so that modules imported by other tests cannot hide (or fake) a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_attacks_load_no_audits_reports_or_cli():
    loaded = _loaded(["robustdistill.attacks", "robustdistill.attacks.privacy"], walk=True)
    assert "robustdistill.attacks.privacy.lira" in loaded  # the walk reached the submodules
    assert _offending(loaded, ["audits", "reports", "cli"]) == []


def test_models_and_data_load_no_higher_layer():
    loaded = _loaded(["robustdistill.models", "robustdistill.data"], walk=True)
    assert _offending(loaded, ["attacks", "audits", "reports", "trainers", "cli"]) == []
