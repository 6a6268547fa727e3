"""GUARD's curvature regulariser (Xue et al., "Towards Adversarially Robust Dataset Distillation by Curvature
Regularization", AAAI 2025), added to the squeeze stage of SRe2L-style dataset distillation.

For each point, z = h * g / ||g||_2 with g = grad_x L(x) (computed in eval mode and detached): a step of length h
along the loss gradient. The regulariser penalises how much the loss GRADIENT changes along that step, a finite-
difference estimate of the curvature (the top Hessian eigenvalue direction) that bounds the adversarial loss:

    R = lambda * mean_i || grad_x [ L_i(x_i + z_i) - L_i(x_i) ] ||_2          (double backprop; CIFAR: lambda 100, h 3)
    R_simple = beta * mean_i | L_i(x_i + z_i) - L_i(x_i) |                    (the large-data variant; beta 1e-4)

The official code uses the first form for CIFAR and the second for ImageNet-scale data. For a loss linear in x the
first form is zero (the gradient does not change along z); the simple form measures the loss change along z, which
also holds the first-order term h * ||g||.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]  # inputs (N, ...) -> per-point losses (N,)


def gradient_step(loss_fn: LossFn, x: torch.Tensor, h: float) -> torch.Tensor:
    """z = h * g / ||g||_2 per point, g = grad_x L(x), detached (no gradient flows through the direction)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x).sum(), x)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
    return (h * g / norm).detach()


def curvature_penalty(loss_fn: LossFn, x: torch.Tensor, h: float = 3.0, weight: float = 100.0) -> torch.Tensor:
    """lambda * mean_i ||grad_x [L_i(x_i + z_i) - L_i(x_i)]||_2, differentiable in the model's parameters."""
    z = gradient_step(loss_fn, x, h)
    x = x.detach().requires_grad_(True)
    difference = loss_fn(x + z) - loss_fn(x)
    (grad,) = torch.autograd.grad(difference.sum(), x, create_graph=True)
    return weight * grad.flatten(1).norm(dim=1).mean()


def simple_curvature_penalty(loss_fn: LossFn, x: torch.Tensor, h: float = 3.0, weight: float = 1e-4) -> torch.Tensor:
    """beta * mean_i |L_i(x_i + z_i) - L_i(x_i)|: the variant without double backprop."""
    z = gradient_step(loss_fn, x, h)
    return weight * (loss_fn(x + z) - loss_fn(x)).abs().mean()
