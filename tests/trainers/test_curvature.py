"""GUARD's curvature regulariser against hand computations of the OFFICIAL form (yumozi/GUARD pretrain_cifar.py and
pretrain.py): z along the gradient g itself (not sign(g)), normalised to length h per point; the double-backprop form
differentiates the batch MEAN of the loss change (so each point's gradient carries 1/N) and averages the per-point
norms; the simple form is |mean of the loss changes|. A sum instead of a mean, a sign step, or a mean of absolute
values fails these tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
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
    # L(x) = 0.5 * a * ||x||^2: grad = a x, so z = h x / ||x|| and grad L(x + z) - grad L(x) = a z, of norm a h; the
    # gradient of the batch mean divides each point's by N = 2.
    a, h, lam = 2.0, 0.5, 10.0
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])

    def quadratic(inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * (inputs**2).sum(1)

    z = gradient_step(quadratic, x, h)
    assert torch.allclose(z, h * x / x.norm(dim=1, keepdim=True))
    assert math.isclose(float(curvature_penalty(quadratic, x, h=h, weight=lam).detach()), lam * a * h / 2, rel_tol=1e-6)
    # The simple form: L(x + z) - L(x) = a (x.z) + a ||z||^2 / 2 = a h ||x|| + a h^2 / 2, both positive here.
    expected = 1e-4 * abs(sum(a * h * r + a * h * h / 2 for r in (5.0, 1.0)) / 2)
    assert math.isclose(float(simple_curvature_penalty(quadratic, x, h=h).detach()), expected, rel_tol=1e-6)


def value(penalty: torch.Tensor) -> float:
    return float(penalty.detach())


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_softmax_classifier_matches_the_official_form_worked_out_in_closed_form() -> None:
    # A real (tiny) model: logits = x W^T + b with cross-entropy. In closed form, grad_x CE_i = W^T (p_i - e_{y_i}),
    # so z_i = h g_i / ||g_i||, and the official double-backprop value is
    # lambda * mean_i || W^T (p(x_i + z_i) - p(x_i)) / N ||, the simple one beta * |mean_i CE_i(x_i + z_i) - CE_i(x_i)|.
    rng = np.random.default_rng(0)
    n, d, c, h, lam, beta = 5, 6, 4, 0.7, 100.0, 1e-4
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    x, y = rng.normal(size=(n, d)), np.array([0, 1, 2, 3, 1])
    onehot = np.eye(c)[y]
    g = (_softmax(x @ w.T + b) - onehot) @ w
    z = h * g / np.linalg.norm(g, axis=1, keepdims=True)
    delta = (_softmax((x + z) @ w.T + b) - _softmax(x @ w.T + b)) @ w
    expected = lam * np.mean(np.linalg.norm(delta / n, axis=1))

    def ce(logits: np.ndarray) -> np.ndarray:
        return -np.log(_softmax(logits)[np.arange(n), y])

    expected_simple = beta * abs(np.mean(ce((x + z) @ w.T + b) - ce(x @ w.T + b)))

    model = nn.Linear(d, c).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w))
        model.bias.copy_(torch.from_numpy(b))
    labels = torch.from_numpy(y)

    def per_point(inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(inputs), labels, reduction="none")

    inputs = torch.from_numpy(x)
    assert np.allclose(gradient_step(per_point, inputs, h).numpy(), z, rtol=1e-10, atol=1e-12)
    assert value(curvature_penalty(per_point, inputs, h=h, weight=lam)) == pytest.approx(expected, rel=1e-9)
    assert value(simple_curvature_penalty(per_point, inputs, h=h, weight=beta)) == pytest.approx(expected_simple, rel=1e-9)
    # The CURE step (sign(g) normalised to length h) gives another value: the test tells the two directions apart.
    z_sign = h * np.sign(g) / np.sqrt(d)
    delta_sign = (_softmax((x + z_sign) @ w.T + b) - _softmax(x @ w.T + b)) @ w
    assert abs(lam * np.mean(np.linalg.norm(delta_sign / n, axis=1)) - expected) > 1e-3 * expected


def test_simple_form_is_the_absolute_value_of_the_mean_change_not_the_mean_of_absolute_values() -> None:
    # L_i(x) = cos(a.x_i) with ||a|| = 1 is curved both ways: with t_i = a.x_i, z_i = -h sign(sin t_i) a, and with
    # h = 2 the loss falls for t = 0.5 (it overshoots the maximum at 0) and rises for t = 2.
    a = torch.tensor([0.6, 0.8], dtype=torch.float64)
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)
    x = t[:, None] * a[None, :]
    h, beta = 2.0, 1.0

    def cosine(inputs: torch.Tensor) -> torch.Tensor:
        return torch.cos(inputs @ a)

    shifted = t - h * torch.sign(torch.sin(t))
    changes = torch.cos(shifted) - torch.cos(t)
    assert float(changes[0]) < 0 < float(changes[1])
    assert value(simple_curvature_penalty(cosine, x, h=h, weight=beta)) == pytest.approx(abs(float(changes.mean())), rel=1e-12)
    # Double backprop on the same loss: grad L_i = -sin(t_i) a, so each point's gradient change has norm
    # |sin(t_i) - sin(shifted_i)|, divided by N = 2 (the batch mean), then averaged.
    expected = float((torch.sin(t) - torch.sin(shifted)).abs().mean()) / 2
    assert value(curvature_penalty(cosine, x, h=h, weight=1.0)) == pytest.approx(expected, rel=1e-12)


def test_duplicating_the_batch_halves_the_double_backprop_form_and_keeps_the_simple_form() -> None:
    # The official double-backprop value is (lambda / N) * mean of per-point norms: N * R is the batch-size-invariant
    # quantity. The simple form is a mean over points and does not change at all.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    def loss_for(labels: torch.Tensor):  # type: ignore[no-untyped-def]
        return lambda inputs: nn.functional.cross_entropy(model(inputs), labels, reduction="none")

    once, twice = loss_for(y), loss_for(torch.cat([y, y]))
    doubled = torch.cat([x, x])
    r1 = value(curvature_penalty(once, x, h=0.5, weight=1.0))
    r2 = value(curvature_penalty(twice, doubled, h=0.5, weight=1.0))
    assert r1 > 0 and len(x) * r1 == pytest.approx(len(doubled) * r2, rel=1e-9)
    s1 = value(simple_curvature_penalty(once, x, h=0.5, weight=1.0))
    assert s1 > 0 and s1 == pytest.approx(value(simple_curvature_penalty(twice, doubled, h=0.5, weight=1.0)), rel=1e-9)


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
