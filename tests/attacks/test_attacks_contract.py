"""Contract tests over every registered image attack (the torchattacks / garak pattern): eps-ball and [0, 1],
shape and dtype, determinism for a seed, robust accuracy <= clean accuracy, and a docstring naming the paper.

Run on the real trained digits model, with each attack's iterations cut down so that the whole registry stays fast.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attacks_support import accuracy, digits_model, test_points
from torch import nn

from robustdistill import attacks
from robustdistill.attacks.base import Attack

# Fewer iterations than the defaults, for speed; every other parameter keeps its default.
FAST: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 5},
    "cw-linf": {"steps": 5},
    "apgd-ce": {"steps": 5},
    "apgd-t": {"steps": 5, "n_target_classes": 2},
    "fab-t": {"steps": 5, "n_target_classes": 2},
    "square": {"n_queries": 30},
    "cw-l2": {"steps": 10, "binary_search_steps": 2},
    "autoattack": {"steps": 5, "n_queries": 30, "n_target_classes": 2},
}

IMAGE_ATTACKS = [
    name for name, factory in attacks.ATTACKS.items() if isinstance(factory, type) and issubclass(factory, Attack)
]


def norms_of(name: str) -> list[str]:
    """The norms an attack accepts: both if it takes a ``norm`` argument, else the one it fixes."""
    if "norm" in inspect.signature(attacks.ATTACKS.get(name)).parameters:
        return ["linf", "l2"]
    return [attacks.ATTACKS.get(name)(**FAST.get(name, {})).norm]


def build(name: str, eps: float, norm: str, seed: int) -> Attack:
    params = dict(FAST.get(name, {}), eps=eps, seed=seed)
    if "norm" in inspect.signature(attacks.ATTACKS.get(name)).parameters:
        params["norm"] = norm
    return attacks.create(name, **params)


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x_adv.double() - x.double()).flatten(1)
    return delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)


CASES = [(name, norm) for name in IMAGE_ATTACKS for norm in norms_of(name)]


def test_every_attack_is_covered() -> None:
    expected = {"fgsm", "pgd", "cw-l2", "cw-linf", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"}
    assert expected <= set(IMAGE_ATTACKS)


@pytest.mark.parametrize(("name", "norm"), CASES)
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    scale=st.floats(0.02, 1.0),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    start=st.integers(0, 40),
)
def test_contract(name: str, norm: str, scale: float, seed: int, dtype: torch.dtype, start: int) -> None:
    model = digits_model()
    x, y = test_points(48)
    x, y = x[start : start + 8].to(dtype), y[start : start + 8]
    eps = scale * (0.3 if norm == "linf" else 2.0)
    atk = build(name, eps, norm, seed)
    x_adv = atk(model, x, y)

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool((distance(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert atk.last_success is not None and atk.last_success.shape == y.shape
    assert accuracy(model, x_adv.float(), y) <= accuracy(model, x.float(), y)
    # same seed, same result (a fresh instance, so nothing is carried over)
    assert torch.equal(build(name, eps, norm, seed)(model, x, y), x_adv)


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_docstring_names_paper_and_threat_model(name: str) -> None:
    factory = attacks.ATTACKS.get(name)
    module = inspect.getmodule(factory)
    for doc in (factory.__doc__, module.__doc__ if module else None):
        assert doc and doc.strip(), f"{name}: missing docstring"
    text = f"{factory.__doc__} {module.__doc__}"
    assert re.search(r"\b(19|20)\d\d\b", text), f"{name}: the docstring should cite the paper (authors, year)"
    assert re.search(r"L-?inf|L2", text), f"{name}: the docstring should name the threat model"
    assert "Threat model" in (module.__doc__ or ""), f"{name}: the module docstring should state the threat model"


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_global_rng_and_model_mode_untouched(name: str) -> None:
    """Attacks draw from their own generator (the global RNG is left as it was) and keep the mode the base set."""
    model = digits_model()
    x, y = test_points(8)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    atk = build(name, 0.1, norms_of(name)[0], 0)
    atk(model, x, y)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


# --- against facts known without running the model -------------------------------------------------------------------


class MeanBrightness(nn.Module):
    """A hand-made 10-class classifier whose decision is known in closed form: class 0 when the image's mean pixel is
    above 0.5, class 1 below it (classes 2-9 never win). Linear, so every white-box attack has a useful gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(dim=1, keepdim=True) - 0.5
        return 10 * torch.cat([m, -m, torch.full((len(x), 8), -1.0, dtype=x.dtype)], dim=1)


# Mean brightness 0.5 + SHIFT (a textured image) and a label: 0 and 1 are the correct labels above and below 0.5.
SHIFT_AND_LABEL = [(0.2, 0), (0.04, 0), (0.01, 0), (-0.01, 1), (-0.04, 1), (-0.2, 1), (0.2, 1), (-0.2, 0), (0.05, 3)]


def brightness_points() -> tuple[torch.Tensor, torch.Tensor]:
    texture = torch.rand(len(SHIFT_AND_LABEL), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    texture -= texture.mean(dim=(1, 2, 3), keepdim=True)
    shifts = torch.tensor([s for s, _ in SHIFT_AND_LABEL]).view(-1, 1, 1, 1)
    return 0.5 + shifts + texture, torch.tensor([label for _, label in SHIFT_AND_LABEL])


def hand_success(x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether the hand rule misclassifies each point, whether the point is far enough from the boundary to tell)."""
    m = x_adv.double().flatten(1).mean(dim=1)
    predicted = torch.where(m > 0.5, 0, 1)
    return predicted != y, (m - 0.5).abs() > 1e-4


def test_brightness_points_are_what_they_claim() -> None:
    x, y = brightness_points()
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    wrong, decided = hand_success(x, y)
    assert bool(decided.all())
    assert wrong.tolist() == [False, False, False, False, False, False, True, True, True]


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_success_flags_match_the_hand_decision_rule(name: str, norm: str) -> None:
    """``last_success`` against the closed-form decision of MeanBrightness on each returned x_adv (not against
    another forward pass of the same model)."""
    x, y = brightness_points()
    eps = 0.1 if norm == "linf" else 0.8  # a uniform shift of 0.1 in L2 over 64 pixels
    atk = build(name, eps, norm, seed=0)
    x_adv = atk(MeanBrightness(), x, y)
    wrong, decided = hand_success(x_adv, y)
    assert atk.last_success is not None and int(decided.sum()) >= len(y) - 2
    assert torch.equal(atk.last_success[decided], wrong[decided]), (atk.last_success, wrong)
    # A point 0.2 from the boundary cannot be moved across it by a mean shift of at most 0.1: never a success.
    assert not bool(atk.last_success[[0, 5]].any())
    # Misclassified to begin with: a success whatever the attack does (it may only make it worse).
    assert bool(atk.last_success[6:].all())


def test_fgsm_steps_against_the_sign_of_the_true_class_by_hand() -> None:
    """FGSM on MeanBrightness: the cross-entropy gradient of every pixel has the sign of d(CE)/d(mean), so x' is x
    moved by eps, down for label 0 and up for label 1; for label 3 it moves toward the class that wins (above
    0.5: up). Points cross the boundary only if they were within eps of it."""
    x, y = brightness_points()
    eps = 0.03
    atk = attacks.create("fgsm", eps=eps)
    x_adv = atk(MeanBrightness(), x, y)
    direction = torch.tensor([-1, -1, -1, 1, 1, 1, 1, -1, 1], dtype=x.dtype).view(-1, 1, 1, 1)
    assert torch.allclose(x_adv, (x + eps * direction).clamp(0, 1), atol=1e-6)
    assert atk.last_success.tolist() == [False, False, True, True, False, False, True, True, True]
