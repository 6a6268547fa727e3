"""The shortened recipes of the backdoor tests' models (conftest.py says why these lengths), importable by the test
modules (a module of its own: ``from conftest import ...`` finds another folder's conftest when several run)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLEAN = ["device=cpu", "epochs=5", "train_fraction=0.5"]
BACKDOOR = ["device=cpu", "epochs=5", "batch_size=32"]
DEFENCE = ["device=cpu", "epochs=3", "steps_per_epoch=30"]
TRIGGER = "tq"  # the recipes'


def recipe(name: str) -> Path:
    return REPO / "defenses" / f"{name}.toml"
