"""APGD-CE: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (the first attack of AutoAttack).

Threat model: L-inf or L2 ball of radius eps. Auto-PGD: gradient ascent with momentum (0.75) whose step size
starts at 2*eps and is halved at checkpoints when the loss oscillates or stops improving, restarting from the best
point. This module also holds the shared engine (:func:`apgd_attack`) that ``apgd-t`` (targeted DLR loss) uses.

A line-by-line port of the official code (fra31/auto-attack, autoattack/autopgd_base.py: APGDAttack and
APGDAttack_targeted) rather than torchattacks' APGD, which is an older copy that seeds the global torch RNG, flips
the model to eval mode, defaults to 10 iterations and, in APGD-T, uses the first sample's step size for the whole
L2 batch. Here randomness comes from the generator the base class passes, and the model stays in the mode the
base class set. Checked against the official code (pyautoattack 0.2.0) on the digits model with the same seed, L-inf
and L2 (tests/attacks/test_autoattack_official.py, benchmarks/autoattack_official.py): APGD-CE and APGD-T compute
bit for bit the official adversarial examples; the base class's final projection onto the eps-ball and [0, 1]
then re-rounds a few float32 values, so the examples returned equal the official ones to ~1e-8 (at most 6e-8 on
200 points), with the same outcome on every point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from robustdistill.attacks.base import ATTACKS, Attack, Norm
from robustdistill.errors import UserInputError
from robustdistill.limits import check_restarts, check_steps

log = logging.getLogger(__name__)

APGDLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None = None) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6): shift- and scale-invariant margin (>= 3 classes)."""
    z, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).float()
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - z[:, -2] * top_is_y - z[:, -1] * (1.0 - top_is_y)) / (z[:, -1] - z[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 7): needs >= 4 classes."""
    assert y_target is not None
    z, _ = logits.sort(dim=1)
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - logits[u, y_target]) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


APGD_LOSSES: dict[str, APGDLoss] = {"ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": dlr_loss_targeted}
MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-targeted": 4}


# The norms are computed exactly as the official code does (sum of squares, then sqrt), so that results match it
# bit for bit.
def _l2(t: torch.Tensor) -> torch.Tensor:
    return (t**2).flatten(1).sum(-1).sqrt().view(-1, *([1] * (t.ndim - 1)))


def _unit(t: torch.Tensor, norm: Norm) -> torch.Tensor:
    size = t.abs().flatten(1).amax(dim=1).view(-1, *([1] * (t.ndim - 1))) if norm == "linf" else _l2(t)
    return t / (size + 1e-12)


def _loss_and_grad(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: APGDLoss, y_target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss_indiv = loss_fn(logits, y, y_target)
        (grad,) = torch.autograd.grad(loss_indiv.sum(), x_adv)
    return grad.detach(), logits.detach(), loss_indiv.detach()


def _oscillation(loss_steps: torch.Tensor, j: int, k: int, rho: float) -> torch.Tensor:
    """True where the loss increased in at most rho*k of the last k steps (official check_oscillation; a
    negative row index wraps around exactly as in the official code)."""
    t = torch.zeros(loss_steps.shape[1], device=loss_steps.device)
    for c in range(k):
        t += (loss_steps[j - c] > loss_steps[j - c - 1]).float()
    return t <= k * rho


def apgd_single_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    rho: float,
    loss_fn: APGDLoss,
    generator: torch.Generator,
    y_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run (official ``attack_single_run``); returns (still correctly classified, adversarial points)."""
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    view = (-1,) + (1,) * (x.ndim - 1)
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + eps * _unit(t, norm)).clamp(0.0, 1.0)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    loss_steps = torch.zeros(steps, x.shape[0], device=x.device)

    grad, logits, loss_indiv = _loss_and_grad(model, x_adv, y, loss_fn, y_target)
    grad_best = grad.clone()
    if loss_fn is not ce_loss:
        # The official check_zero_gradients: an exactly zero DLR gradient points to gradient masking.
        zero = int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
        if zero:
            log.warning("APGD: the DLR gradient is zero for %d of %d points; the model may mask gradients",
                        zero, x.shape[0])
    acc = logits.argmax(1) == y
    loss_best = loss_indiv.clone()

    step_size = torch.full((x.shape[0], *view[1:]), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_adv_old = x_adv.clone()
    k = steps_2
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best, dtype=torch.bool)

    for i in range(steps):
        with torch.no_grad():
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "linf":
                x_adv_1 = x_adv + step_size * grad.sign()
                x_adv_1 = torch.clamp(torch.minimum(torch.maximum(x_adv_1, x - eps), x + eps), 0.0, 1.0)
                x_adv_1 = torch.clamp(
                    torch.minimum(torch.maximum(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps),
                    0.0, 1.0,
                )
            else:
                x_adv_1 = x_adv + step_size * _unit(grad, norm)
                x_adv_1 = torch.clamp(x + _unit(x_adv_1 - x, norm) * _l2(x_adv_1 - x).clamp(max=eps), 0.0, 1.0)
                x_adv_1 = x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a)
                x_adv_1 = torch.clamp(x + _unit(x_adv_1 - x, norm) * _l2(x_adv_1 - x).clamp(max=eps), 0.0, 1.0)
            x_adv = x_adv_1

        grad, logits, loss_indiv = _loss_and_grad(model, x_adv, y, loss_fn, y_target)

        with torch.no_grad():
            pred = logits.argmax(1) == y
            acc = acc & pred
            x_best_adv[~pred] = x_adv[~pred]

            loss_steps[i] = loss_indiv
            improved = loss_indiv > loss_best
            x_best[improved] = x_adv[improved]
            grad_best[improved] = grad[improved]
            loss_best[improved] = loss_indiv[improved]

            counter3 += 1
            if counter3 == k:
                fl_oscillation = _oscillation(loss_steps, i, k, rho)
                fl_reduce_no_impr = ~reduced_last_check & (loss_best_last_check >= loss_best)
                fl_oscillation = fl_oscillation | fl_reduce_no_impr
                reduced_last_check = fl_oscillation.clone()
                loss_best_last_check = loss_best.clone()
                if bool(fl_oscillation.any()):
                    step_size[fl_oscillation] /= 2.0
                    x_adv[fl_oscillation] = x_best[fl_oscillation]
                    grad[fl_oscillation] = grad_best[fl_oscillation]
                k = max(k - size_decr, steps_min)
                counter3 = 0
    return acc, x_best_adv


def apgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    restarts: int,
    rho: float,
    loss: str,
    generator: torch.Generator,
    n_target_classes: int = 9,
) -> torch.Tensor:
    """APGD as in the official ``perturb``: each restart (and, targeted, each target class) runs only on the
    points not yet fooled; fooled points keep their first adversarial example, the others are returned clean."""
    loss_fn = APGD_LOSSES[loss]
    with torch.no_grad():
        clean_logits = model(x)
    num_classes = clean_logits.shape[1]
    if num_classes < MIN_CLASSES[loss]:
        raise UserInputError("model", f"the {loss} loss needs at least {MIN_CLASSES[loss]} classes, the model has "
                             f"{num_classes}", "use apgd-ce")
    acc = clean_logits.argmax(1) == y
    adv = x.clone()
    targets = range(2, min(n_target_classes, num_classes - 1) + 2) if loss == "dlr-targeted" else [None]
    for target_class in targets:
        for _ in range(restarts):
            idx = acc.nonzero().flatten()
            if idx.numel() == 0:
                return adv
            y_target = None
            if target_class is not None:
                y_target = clean_logits[idx].sort(dim=1)[1][:, -target_class]
            acc_curr, adv_curr = apgd_single_run(
                model, x[idx], y[idx], eps=eps, norm=norm, steps=steps, rho=rho, loss_fn=loss_fn,
                generator=generator, y_target=y_target,
            )
            fooled = ~acc_curr
            acc[idx[fooled]] = False
            adv[idx[fooled]] = adv_curr[fooled]
    return adv


def check_apgd_params(steps: int, restarts: int, rho: float) -> None:
    check_steps("steps", steps)
    check_restarts("restarts", restarts)
    if not 0 < rho <= 1:
        raise UserInputError("rho", f"must be in (0, 1], got {rho}", "the paper uses 0.75")


@ATTACKS.register("apgd-ce")
class APGDCE(Attack):
    """Auto-PGD on the cross-entropy loss (Croce & Hein 2020), L-inf or L2; AutoAttack's first attack.

    Args:
        eps: radius (default 8/255).
        norm: "linf" or "l2".
        steps: iterations (default 100, the official setting).
        restarts: random restarts, each on the points still robust (default 1, AutoAttack standard).
        rho: step-size decrease threshold (default 0.75).
        seed: seeds the random starting points.
    Inputs (N, C, H, W) in [0, 1]; returns x_adv of the same shape and dtype (points never fooled unchanged).
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: Norm = "linf",
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed)
        check_apgd_params(steps, restarts, rho)
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.rho = float(rho)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return apgd_attack(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, restarts=self.restarts, rho=self.rho,
            loss="ce", generator=generator,
        )
