"""Recipes and --set overrides: typed, validated, with errors that name the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill import trainers
from robustdistill.errors import UserInputError
from robustdistill.trainers.config import parse_override


def test_threat_model_preset_supplies_eps_unless_the_recipe_sets_it() -> None:
    assert trainers.create("pgd-at", recipe="defenses/digits-pgd-at.toml").config.eps == 0.125
    assert trainers.create("pgd-at", recipe="defenses/digits-pgd-at.toml", overrides=["eps=0.05"]).config.eps == 0.05


GENERATORS = ("ddpm", "sid", "sfd", "t2i", "badt2i", "skd-cag")  # diffusion trainers: no classifier, no threat model


def test_every_digits_recipe_uses_the_digits_threat_model() -> None:
    for recipe in sorted(Path("defenses").glob("digits-*.toml")):
        method = tomllib.loads(recipe.read_text())["method"]
        config = trainers.create(method, recipe=recipe).config
        if method in GENERATORS:
            assert not hasattr(config, "threat_model")
            assert method in ("sid", "sfd", "skd-cag") or config.data.kind == "digits"  # sid, sfd, skd-cag: data-free
            continue
        assert config.threat_model is not None and config.threat_model.endswith("attacks/digits-linf.toml")
        assert config.eps == 0.125 and config.data.kind == "digits"


def test_cifar10_recipes_validate_with_the_papers_settings() -> None:
    pgd_at = trainers.create("pgd-at", recipe="defenses/cifar10-pgd-at.toml").config
    assert (pgd_at.eps, pgd_at.step_size, pgd_at.attack_steps, pgd_at.arch) == (8 / 255, 2 / 255, 10, "resnet18-cifar")
    trades = trainers.create("trades", recipe="defenses/cifar10-trades.toml").config
    assert (trades.beta, trades.eps, trades.step_size, trades.arch, trades.epochs) == (6.0, 0.031, 0.007, "wrn-34-10", 76)
    for method in ("standard", "kd", "defensive-distillation"):
        trainers.create(method, recipe=f"defenses/cifar10-{method}.toml")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("epochs=abc", "epochs"),
        ("epochs=0", "epochs"),
        ("lr=-1", "lr"),
        ("optimiser='adam'", "optimiser"),
        ("select_metric='test'", "select_metric"),
        ("data.kind='mnist'", "data.kind"),
        ("data.val_fraction=2.0", "data.val_fraction"),
        ("augment='mixup'", "augment"),
        ("no-equals-sign", "--set"),
    ],
)
def test_bad_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises(UserInputError) as caught:
        trainers.create("standard", recipe="defenses/digits-standard.toml", overrides=[override])
    assert str(caught.value).startswith(field), str(caught.value)


def test_recipe_for_another_method_is_refused() -> None:
    with pytest.raises(UserInputError, match="robustdistill train kd"):
        trainers.create("standard", recipe="defenses/digits-kd.toml")


def test_unknown_method_suggests_the_closest() -> None:
    with pytest.raises(UserInputError, match="pgd-at"):
        trainers.create("pgd_at", recipe="defenses/digits-pgd-at.toml")


def test_missing_and_malformed_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--config"):
        trainers.create("standard", recipe=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [\n")
    with pytest.raises(UserInputError, match="not valid TOML"):
        trainers.create("standard", recipe=bad)


@settings(max_examples=50, deadline=None)
@given(value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans()))
def test_override_values_are_read_as_typed_literals(value: object) -> None:
    literal = str(value).lower() if isinstance(value, bool) else repr(value)
    key, parsed = parse_override(f"a.b={literal}")
    assert key == ["a", "b"] and parsed == value and type(parsed) is type(value)


def test_bare_strings_are_kept_as_strings() -> None:
    assert parse_override("arch=cnn-tiny") == (["arch"], "cnn-tiny")
    assert parse_override("teacher=checkpoints/x") == (["teacher"], "checkpoints/x")
