"""The Attack base class: everything around an attack that every attack needs done the same way.

Subclasses implement :meth:`Attack.perturb`; the base owns input checks, model mode, gradients, seeding,
projection onto the eps-ball and [0, 1], dtype and per-sample success (the torchattacks pattern, without its
custom ``__setattr__`` or prints).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from robustdistill.errors import UserInputError
from robustdistill.limits import check_eps, check_finite, check_seed
from robustdistill.registry import Registry

log = logging.getLogger(__name__)

Norm = Literal["linf", "l2"]
ModelMode = Literal["eval", "train", "as-is"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ATTACKS: Registry["Attack"] = Registry("attack")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    check_finite(name, value)
    if not (value > 0 or (allow_zero and value == 0)):
        raise UserInputError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project onto the eps-ball around x (in the given norm) intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        flat = delta.flatten(1)
        scale = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        delta = (flat * scale[:, None]).view_as(delta)
    return (x + delta).clamp(0.0, 1.0)


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="sum")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: max other logit minus true logit (masking that is correct for negative logits)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (others.amax(dim=1) - true).sum()


LOSSES: dict[str, LossFn] = {"ce": cross_entropy_loss, "cw": margin_loss}


class Attack:
    """Base class. ``atk(model, x, y) -> x_adv``: same shape and dtype, inside the eps-ball and [0, 1].

    Args:
        eps: radius of the threat model in [0, 1] pixel space.
        norm: "linf" or "l2".
        seed: seeds any randomness (random starts, restarts); the same seed gives the same x_adv.
    """

    norm: Norm = "linf"
    # Minimum-norm attacks (CW-L2) take eps = inf: no bound on the perturbation.
    unbounded_eps: bool = False

    def __init__(self, eps: float, norm: Norm = "linf", seed: int = 0) -> None:
        if norm not in ("linf", "l2"):
            raise UserInputError("norm", f"unknown norm {norm!r}", "use 'linf' or 'l2'")
        self.eps = check_eps("eps", eps, norm, allow_inf=self.unbounded_eps)
        self.norm = norm
        self.seed = check_seed("seed", seed)
        self.last_success: torch.Tensor | None = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        mode: ModelMode = "eval",
        generator: torch.Generator | None = None,
        record_success: bool = True,
    ) -> torch.Tensor:
        """Attack ``model`` at (x, y).

        ``mode`` sets BatchNorm/dropout behaviour during the attack; ``generator`` replaces the attack's own
        seeded generator (trainers pass one that advances from batch to batch); ``record_success=False`` skips
        the extra forward pass that fills ``last_success`` (training does not need it).
        """
        self._check_inputs(x, y)
        self._check_radius(x)
        self.last_success = None  # never leave a previous call's result behind
        was_training = model.training
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(self.seed)
        try:
            with torch.enable_grad():
                x_adv = self.perturb(model, x.detach().float(), y.detach(), generator)
            x_adv = project(x_adv.detach(), x.detach().float(), self.eps, self.norm)
            # Success is measured in eval mode only: a train-mode forward would move BatchNorm statistics.
            # It is measured on the float32 result the model can take, before the cast back to x's dtype.
            if record_success and not model.training:
                with torch.no_grad():
                    self.last_success = model(x_adv).argmax(1) != y
        finally:
            model.train(was_training)
        return x_adv.to(x.dtype)

    @staticmethod
    def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
        if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise UserInputError("x, y", f"shapes {tuple(x.shape)} and {tuple(y.shape)} do not match", "pass x as (N, ...) and y as (N,)")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise UserInputError("x", "inputs must be in [0, 1]", "declare normalisation in the model, not the data")

    def _check_radius(self, x: torch.Tensor) -> None:
        # An L2 radius beyond the diameter of [0, 1]^d is no bound at all: say so rather than report a number.
        if self.norm == "l2" and self.eps != float("inf") and x.ndim >= 2:
            check_eps("eps", self.eps, "l2", dims=int(x[0].numel()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("last_"))
        return f"{type(self).__name__}({params})"


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn(model(x), y)`` with respect to x, and the logits."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = loss_fn(logits, y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()
