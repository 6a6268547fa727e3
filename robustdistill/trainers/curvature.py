"""GUARD's curvature regulariser (Xue et al., "Towards Adversarially Robust Dataset Distillation by Curvature
Regularization", AAAI 2025), added to the squeeze stage of SRe2L-style dataset distillation.

The forms below are those of the official code (yumozi/GUARD: pretrain/pretrain_cifar.py for the double-backprop form,
pretrain/pretrain.py for the simple one), which differ in scale from a per-example reading of the paper's formula.
With L_i the per-point loss and N the batch size:

- Direction: z_i = h * g_i / ||g_i||_2, g_i = grad_x L_i(x_i), computed in eval mode and detached: a step of length h
  along the loss gradient itself. The CURE code GUARD builds on (F-Salehi/CURE_robustness) steps along sign(g)
  normalised to length h; GUARD's code has that line commented out and uses g. The official code takes g from the
  batch-mean loss (g_i / N: the same direction) and adds 1e-7 to g and to its norm, which tilts z towards the
  all-ones vector and lengthens it when g_i / N is near 1e-7 (confidently classified points); we normalise g_i
  itself and do not copy that.
- Double backprop (CIFAR; lambda 100, h 3 at batch 128): the gradient of the batch MEAN of L_i(x_i + z_i) - L_i(x_i)
  with respect to the inputs, its L2 norm per point, averaged over the batch:

      R = lambda * mean_i || grad_{x_i} (1/N) sum_j [L_j(x_j + z_j) - L_j(x_j)] ||_2
        = (lambda / N) * mean_i || grad L_i(x_i + z_i) - grad L_i(x_i) ||_2

  Because each point's gradient carries the 1/N of the batch mean, R depends on the batch size: lambda means
  "at this batch size" (the CIFAR lambda 100 at batch 128 is 100/128 = 0.78 times the per-example mean norm), and a
  batch twice as large with the same points halves R. The paper writes the regulariser per example; we follow the
  code's scale, which is what its lambda was tuned with. (Until this was checked against the code, our form
  differentiated the SUM of the per-point losses: N times the official strength.)
- Simple (large data; beta 1e-4): the absolute value of the batch-mean loss change along z, no double backprop:

      R_simple = beta * | (1/N) sum_i [L_i(x_i + z_i) - L_i(x_i)] |

  (the absolute value of the mean, not the mean of absolute values); this one does not depend on the batch size.

For a loss linear in x the double-backprop form is zero (the gradient does not change along z); the simple form
measures the loss change along z, which also holds the first-order term h * ||g||.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]  # inputs (N, ...) -> per-point losses (N,)


def gradient_step(loss_fn: LossFn, x: torch.Tensor, h: float) -> torch.Tensor:
    """z = h * g / ||g||_2 per point, g = grad_x L(x), detached (no gradient flows through the direction)."""
    x = x.detach().requires_grad_(True)
    # Each point's loss depends on its own input only, so the gradient of the sum is every point's own gradient.
    (g,) = torch.autograd.grad(loss_fn(x).sum(), x)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
    return (h * g / norm).detach()


def curvature_penalty(loss_fn: LossFn, x: torch.Tensor, h: float = 3.0, weight: float = 100.0) -> torch.Tensor:
    """lambda * mean_i ||grad_{x_i} mean_j [L_j(x_j + z_j) - L_j(x_j)]||_2 (the official code's scale), differentiable
    in the model's parameters."""
    z = gradient_step(loss_fn, x, h)
    x = x.detach().requires_grad_(True)
    difference = (loss_fn(x + z) - loss_fn(x)).mean()  # the batch MEAN, as the official code's CrossEntropyLoss()
    (grad,) = torch.autograd.grad(difference, x, create_graph=True)
    return weight * grad.flatten(1).norm(dim=1).mean()


def simple_curvature_penalty(loss_fn: LossFn, x: torch.Tensor, h: float = 3.0, weight: float = 1e-4) -> torch.Tensor:
    """beta * |mean_i [L_i(x_i + z_i) - L_i(x_i)]|: the variant without double backprop (official scale)."""
    z = gradient_step(loss_fn, x, h)
    return weight * (loss_fn(x + z) - loss_fn(x)).mean().abs()
