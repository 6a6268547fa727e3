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
    # last_success is exactly "the prediction on x_adv is wrong"
    with torch.no_grad():
        assert torch.equal(atk.last_success, model(x_adv.float()).argmax(1) != y)
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
