"""GUARD's curvature regulariser: zero for a loss linear in x, positive for a curved one, and equal to a finite
difference worked out by hand on a tiny quadratic model."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustdistill.trainers.curvature import curvature_penalty, gradient_step, simple_curvature_penalty


def test_zero_for_a_loss_linear_in_the_input() -> None:
    w = torch.tensor([[0.5, -2.0, 1.0]])
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def linear(inputs: torch.Tensor) -> torch.Tensor:
        return (inputs * w).sum(1)

    assert float(curvature_penalty(linear, x).detach()) < 1e-6


def test_quadratic_matches_a_hand_computed_finite_difference() -> None:
    # L(x) = 0.5 * a * ||x||^2: grad = a x, so z = h x / ||x|| and grad L(x + z) - grad L(x) = a z, of norm a h.
    a, h, lam = 2.0, 0.5, 10.0
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])

    def quadratic(inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * (inputs**2).sum(1)

    z = gradient_step(quadratic, x, h)
    assert torch.allclose(z, h * x / x.norm(dim=1, keepdim=True))
    assert math.isclose(float(curvature_penalty(quadratic, x, h=h, weight=lam).detach()), lam * a * h, rel_tol=1e-6)
    # The simple form: L(x + z) - L(x) = a (x.z) + a ||z||^2 / 2 = a h ||x|| + a h^2 / 2.
    expected = 1e-4 * sum(a * h * r + a * h * h / 2 for r in (5.0, 1.0)) / 2
    assert math.isclose(float(simple_curvature_penalty(quadratic, x, h=h).detach()), expected, rel_tol=1e-6)


def test_positive_for_a_curved_network_and_differentiable_in_its_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.rand(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])

    def loss(inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(inputs), y, reduction="none")

    penalty = curvature_penalty(loss, x, h=0.5, weight=1.0)
    assert float(penalty.detach()) > 0
    penalty.backward()  # double backprop reaches the parameters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
