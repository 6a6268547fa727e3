"""Bounds on user-controlled numbers hold in the Python API too, not only behind the CLI: attacks from the registry,
trainer configs built in Python, suites given as dicts, data specs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from robustdistill import attacks, trainers
from robustdistill.audits.schema import load_suite
from robustdistill.data import DataSpec
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_RESTARTS, MAX_SEED, MAX_STEPS
from robustdistill.models import Classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("pgd", {"steps": 10**9}, "steps"),
        ("pgd", {"steps": MAX_STEPS + 1}, "steps"),
        ("pgd", {"restarts": MAX_RESTARTS + 1}, "restarts"),
        ("pgd", {"eps": math.inf}, "eps"),
        ("pgd", {"eps": 1e308}, "eps"),
        ("pgd", {"eps": math.nan}, "eps"),
        ("pgd", {"eps": 1.5}, "eps"),
        ("pgd", {"norm": "l2", "eps": 1e308}, "eps"),
        ("pgd", {"seed": -1}, "seed"),
        ("pgd", {"seed": 2**64}, "seed"),
        ("pgd", {"steps": 2.5}, "steps"),
        ("fgsm", {"eps": math.inf}, "eps"),
        ("cw-linf", {"restarts": 10**6}, "restarts"),
        ("apgd-ce", {"steps": 10**9}, "steps"),
        ("apgd-t", {"restarts": 10**6}, "restarts"),
        ("fab-t", {"steps": 10**9}, "steps"),
        ("square", {"n_queries": 10**12}, "n_queries"),
        ("square", {"restarts": 10**6}, "restarts"),
        ("autoattack", {"steps": 10**9}, "steps"),
        ("autoattack", {"seed": 2**64}, "seed"),
        ("cw-l2", {"lr": 1e308}, "lr"),
        ("cw-l2", {"steps": 10**9}, "steps"),
        ("cw-l2", {"eps": math.nan}, "eps"),
    ],
)
def test_attack_registry_refuses_unbounded_parameters(name: str, params: dict, field: str) -> None:
    with pytest.raises(UserInputError) as info:
        attacks.create(name, **params)
    assert info.value.field == field


def test_bounds_leave_the_papers_settings_and_minimum_norm_attacks_alone() -> None:
    assert attacks.create("pgd", steps=MAX_STEPS, restarts=MAX_RESTARTS, seed=MAX_SEED, eps=1.0).steps == MAX_STEPS
    assert attacks.create("cw-l2", eps=math.inf).eps == math.inf  # minimum-norm: no radius
    assert attacks.create("cw-l2").eps == math.inf
    assert attacks.create("pgd", steps=10.0).steps == 10  # an integral float, as TOML or JSON may give


def test_l2_radius_beyond_the_inputs_diameter_is_refused_before_the_attack() -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=10, input_shape=(1, 8, 8))
    x, y = torch.full((2, 1, 8, 8), 0.5), torch.tensor([0, 1])
    attack = attacks.create("pgd", norm="l2", eps=8.5, steps=1)  # [0, 1]^64 has diameter 8
    with pytest.raises(UserInputError, match=r"eps: l2 radius must be in \[0, 8\]"):
        attack(model, x, y)
    assert attacks.create("pgd", norm="l2", eps=8.0, steps=1)(model, x, y).shape == x.shape


@pytest.mark.parametrize(
    ("override", "field"),
    [("lr=1e308", "lr"), ("lr=inf", "lr"), ("seed=-1", "seed"), ("seed=18446744073709551616", "seed"),
     ("eps=inf", "eps"), ("eps=2.0", "eps"), ("attack_steps=1000000000", "attack_steps"),
     ("val_attack_steps=1000000000", "val_attack_steps"), ("train_subset_seed=-1", "train_subset_seed"),
     ("weight_decay=inf", "weight_decay"), ("norm=l2 eps=8.5", "eps")],  # L2 on digits: diameter 8
)
def test_recipe_bounds(override: str, field: str) -> None:
    with pytest.raises(UserInputError) as info:
        trainers.create("pgd-at", recipe=REPO / "defenses/digits-pgd-at.toml", overrides=override.split())
    assert info.value.field == field


def test_nested_settings_and_configs_built_in_python_are_bounded() -> None:
    with pytest.raises(UserInputError) as info:
        trainers.create("guard", recipe=REPO / "defenses/digits-guard.toml", overrides=["recover.iterations=1000000000"])
    assert info.value.field == "recover.iterations"
    config = trainers.TRAINERS.get("standard").config_class(arch="cnn-tiny", lr=1e308)
    with pytest.raises(UserInputError) as info:
        trainers.create("standard", config)
    assert info.value.field == "lr"


@pytest.mark.parametrize(
    ("suite", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"threat_model": {"eps": math.inf}}, "threat_model.eps"),
        ({"threat_model": {"eps": 1e308}}, "threat_model.eps"),
        ({"threat_model": {"norm": "l2", "eps": 8.5}}, "threat_model.eps"),  # digits: diameter 8
        ({"threat_model": {"eps": 0.1}, "probes": [{"kind": "attack", "attack": "pgd", "params": {"steps": 10**9}}]},
         "probes[0].params.steps"),
    ],
)
def test_suite_bounds(suite: dict, field: str) -> None:
    raw = {"data": {"kind": "digits"}, "probes": [{"kind": "clean"}], **suite}
    with pytest.raises(UserInputError) as info:
        load_suite(raw)
    assert info.value.field == field


def test_split_seed_bounded() -> None:
    for seed in (-1, 2**64):
        with pytest.raises(UserInputError) as info:
            DataSpec(split_seed=seed)
        assert info.value.field == "data.split_seed"
