"""PGD: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018.

Threat model: L-inf or L2 ball of radius eps; projected (signed / normalised) gradient ascent on a loss of the
logits from a uniform random start, with optional restarts keeping each sample's first successful restart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustdistill.attacks.base import ATTACKS, LOSSES, Attack, Norm, check_positive, project
from robustdistill.errors import UserInputError
from robustdistill.limits import check_restarts, check_steps


def random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """A uniform point in the L-inf ball, or a point uniform in radius along a random L2 direction."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return project(x + eps * noise, x, eps, norm)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).flatten(1)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radius = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype) * eps
    return project(x + (direction * radius).view_as(x), x, eps, norm)


def ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest-ascent step of unit size in ``norm``: the gradient's sign (L-inf) or the gradient scaled to unit
    L2 norm per sample (L2)."""
    if norm == "linf":
        return grad.sign()
    flat = grad.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


def projected_ascent(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    x_start: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm,
) -> torch.Tensor:
    """``steps`` steps of projected gradient ascent of ``objective(x_adv)`` (a scalar) from ``x_start``: each a step
    of ``step_size`` along :func:`ascent_direction`, then projection onto the eps-ball around x inside [0, 1].

    The one ascent loop of PGD (its loss of the logits) and of the adversarial trainers' inner maximisation (any
    objective, e.g. a teacher-student KL: robustdistill.trainers.adversarial.maximise)."""
    x_adv = x_start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
        x_adv = project(x_adv.detach() + step_size * ascent_direction(grad, norm), x, eps, norm).detach()
    return x_adv


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected Gradient Descent (Madry et al. 2018), L-inf or L2.

    Args:
        eps: radius (default 8/255, the RobustBench CIFAR-10 L-inf threat model).
        alpha: step size (default eps/4, i.e. 2/255 at 8/255).
        steps: iterations (default 10).
        norm: "linf" or "l2".
        random_start: start from a uniform random point in the ball (default True).
        restarts: independent random starts; each sample keeps its first successful one.
        loss: "ce" (cross-entropy of logits) or "cw" (logit margin).
        seed: seeds the random starts.
    Inputs (N, C, H, W) in [0, 1]; returns x_adv of the same shape and dtype.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        norm: Norm = "linf",
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed)
        self.alpha = float(alpha) if alpha is not None else self.eps / 4
        check_positive("alpha", self.alpha, allow_zero=eps == 0)
        steps = check_steps("steps", steps)
        restarts = check_restarts("restarts", restarts)
        if loss not in LOSSES:
            raise UserInputError("loss", f"unknown loss {loss!r}", f"use one of {sorted(LOSSES)}")
        self.steps = int(steps)
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.loss = loss

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        loss_fn = LOSSES[self.loss]
        for _ in range(self.restarts):
            start = random_start(x, self.eps, self.norm, generator) if self.random_start else x
            x_adv = projected_ascent(
                lambda x_adv: loss_fn(model(x_adv), y), x, start, eps=self.eps, step_size=self.alpha,
                steps=self.steps, norm=self.norm,
            )
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                fooled = model(x_adv).argmax(1) != y
            # Keep the first success per sample; unsuccessful samples keep the latest restart.
            take = ~found
            best[take] = x_adv[take]
            found |= fooled
            if bool(found.all()):
                break
        return best
