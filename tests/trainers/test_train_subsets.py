"""Training on part of the train split (train_fraction, train_subset_seed, train_subset_rest), training on given
points (Trainer.fit(train_data=...)) and select_metric = "last": real tiny digits models, a few epochs each."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from robustdistill import load_model, trainers
from robustdistill.data import load_split, parse_spec
from robustdistill.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "defenses" / "digits-overfit.toml"  # test_fraction 0.6: a 360-point train split
SPEC = {"kind": "digits", "test_fraction": 0.6}


def train(out: Path, *overrides: str) -> dict[str, Any]:
    trainer = trainers.create("standard", recipe=RECIPE, overrides=["device=cpu", "epochs=2", *overrides])
    path = trainer.fit(out)
    return json.loads((Path(path) / "config.json").read_text())["provenance"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Provenance of models trained on a seeded half, on the rest of that half, and on another seed's half."""
    root = tmp_path_factory.mktemp("subsets")
    return {
        "half": train(root / "half", "train_fraction=0.5", "train_subset_seed=0"),
        "rest": train(root / "rest", "train_fraction=0.5", "train_subset_seed=0", "train_subset_rest=true"),
        "other": train(root / "other", "train_fraction=0.5", "train_subset_seed=1"),
    }


def test_half_the_train_split_is_recorded_as_members(halves: dict[str, dict[str, Any]]) -> None:
    provenance = halves["half"]
    full = load_split(parse_spec(provenance["data"]["spec"]), "train")
    assert len(full) == 360
    members = provenance["train_members"]
    assert len(members) == len(set(members)) == 180
    assert set(members) <= {int(i) for i in full.indices}
    assert provenance["data"]["n_trained_on"] == 180
    # the fingerprint is the WHOLE train split's (what a membership audit reloads and checks), not the half's
    assert provenance["data"]["fingerprint"] == full.fingerprint
    assert provenance["data"]["fingerprint"] == load_split(SPEC, "train").fingerprint
    # a class-balanced half: every digit about half its train count
    label_of = {int(i): int(y) for i, y in zip(full.indices, full.y)}
    chosen, total = Counter(label_of[i] for i in members), Counter(label_of.values())
    assert all(abs(chosen[c] - total[c] / 2) <= 1 for c in total), (chosen, total)


def test_rest_is_exactly_the_complement(halves: dict[str, dict[str, Any]]) -> None:
    half, rest = set(halves["half"]["train_members"]), set(halves["rest"]["train_members"])
    full = {int(i) for i in load_split(SPEC, "train").indices}
    assert half.isdisjoint(rest) and half | rest == full
    assert halves["rest"]["data"]["n_trained_on"] == len(rest) == 180
    assert halves["rest"]["data"]["fingerprint"] == halves["half"]["data"]["fingerprint"]


def test_the_subset_depends_on_its_seed_only(halves: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    other = set(halves["other"]["train_members"])
    assert len(other) == 180 and other != set(halves["half"]["train_members"])
    # the same subset seed with another training seed: the same points
    again = train(tmp_path / "again", "train_fraction=0.5", "train_subset_seed=0", "seed=7", "epochs=1")
    assert again["train_members"] == halves["half"]["train_members"]


def test_whole_split_by_default(tmp_path: Path) -> None:
    provenance = train(tmp_path / "all", "train_fraction=1.0", "epochs=1")
    full = load_split(SPEC, "train")
    assert sorted(provenance["train_members"]) == sorted(int(i) for i in full.indices)
    assert provenance["data"]["fingerprint"] == full.fingerprint


def test_select_last_keeps_the_final_epoch(tmp_path: Path) -> None:
    # lr 0.5 makes validation accuracy jump around: (on this seed) it peaks at epoch 2 and falls at epoch 3, so
    # selecting on val and keeping the last epoch give different models.
    settings = ("epochs=3", "lr=0.5")
    last = train(tmp_path / "last", *settings, "select_metric=last")
    history = [h["val_clean_accuracy"] for h in last["history"]]
    assert len(history) == 3
    assert max(history) > history[-1], history  # the premise: selection on val would pick an earlier epoch
    assert last["selection"]["metric"] == "last" and last["selection"]["best_epoch"] == 3
    val = load_split(SPEC, "val")
    with torch.no_grad():
        kept = float((load_model(tmp_path / "last")(val.x).argmax(1) == val.y).float().mean())
    assert kept == pytest.approx(history[-1])  # the saved weights are the final epoch's
    clean = train(tmp_path / "clean", *settings, "select_metric=clean")
    assert [h["val_clean_accuracy"] for h in clean["history"]] == history  # the same training, another choice
    best = max(range(3), key=lambda e: (history[e], e)) + 1
    assert clean["selection"]["best_epoch"] == best < 3


def test_fit_on_given_points(tmp_path: Path) -> None:
    pool = load_split(SPEC, "train").subset(50, seed=5)
    trainer = trainers.create("standard", recipe=RECIPE, overrides=["device=cpu", "epochs=1"])
    path = trainer.fit(tmp_path / "given", train_data=pool)
    provenance = json.loads((path / "config.json").read_text())["provenance"]
    assert provenance["train_members"] == [int(i) for i in pool.indices]
    assert provenance["data"]["n_trained_on"] == 50


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_train_fraction_out_of_range(fraction: str) -> None:
    with pytest.raises(UserInputError) as info:
        trainers.create("standard", recipe=RECIPE, overrides=[f"train_fraction={fraction}"])
    assert "train_fraction" in info.value.field


def test_rest_of_the_whole_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    trainer = trainers.create("standard", recipe=RECIPE, overrides=["device=cpu", "train_fraction=1",
                                                                    "train_subset_rest=true"])
    with pytest.raises(UserInputError) as info:
        trainer.fit(tmp_path / "model")
    assert info.value.field in ("train_subset_rest", "train_fraction")
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.partial").exists()
