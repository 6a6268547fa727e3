"""The one ascent-and-project loop (attacks/pgd.py: projected_ascent) gives bit for bit the x_adv of the two loops it
replaced: PGD's own (a loss of the logits) and the adversarial trainers' inner maximisation (any objective).

The references below are those loops as they stood before (commit 7de6295), written out by hand; the model is the
real digits model of test_attacks_support, the points real digits test points.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_attacks_support import DIGITS_EPS, digits_model, test_points
from torch import nn

from robustdistill import attacks
from robustdistill.attacks.base import LOSSES, gradient, project
from robustdistill.attacks.pgd import random_start
from robustdistill.trainers.adversarial import attack_start, maximise, teacher_student_kl


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    flat = grad.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


def reference_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                  norm: str, loss: str, seed: int) -> torch.Tensor:
    """PGD.perturb with one restart as before: the random start, then the old pgd_steps loop."""
    generator = torch.Generator().manual_seed(seed)
    x_adv = random_start(x, eps, norm, generator).detach()  # type: ignore[arg-type]
    for _ in range(steps):
        grad, _ = gradient(model, x_adv, y, LOSSES[loss])
        x_adv = project(x_adv + alpha * _direction(grad, norm), x, eps, norm).detach()  # type: ignore[arg-type]
    return project(x_adv, x, eps, norm)  # type: ignore[arg-type]  # Attack.__call__'s final projection


def reference_maximise(model: nn.Module, objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                       eps: float, step_size: float, steps: int, norm: str, start: str, seed: int) -> torch.Tensor:
    """trainers.adversarial.maximise as before (the model's mode is the caller's)."""
    x_adv = attack_start(x, start, eps, norm, torch.Generator().manual_seed(seed)).detach()  # type: ignore[arg-type]
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
        step = step_size * _direction(grad, norm)
        x_adv = project(x_adv.detach() + step, x, eps, norm).detach()  # type: ignore[arg-type]
    return x_adv


@pytest.mark.parametrize(("norm", "eps", "loss"), [("linf", DIGITS_EPS, "ce"), ("linf", DIGITS_EPS, "cw"),
                                                   ("l2", 1.0, "ce")])
def test_pgd_gives_the_x_adv_of_the_loop_it_replaced(norm: str, eps: float, loss: str) -> None:
    x, y = test_points(48)
    alpha, steps = eps / 4, 10
    pgd = attacks.create("pgd", eps=eps, alpha=alpha, steps=steps, norm=norm, loss=loss, seed=3)
    x_adv = pgd(digits_model(), x, y)
    expected = reference_pgd(digits_model(), x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, loss=loss, seed=3)
    assert not torch.equal(expected, x)  # the attack moved the points: the comparison is not of two no-ops
    assert torch.equal(x_adv, expected)


@pytest.mark.parametrize(("norm", "eps", "start"), [("linf", DIGITS_EPS, "uniform"), ("linf", DIGITS_EPS, "normal"),
                                                    ("l2", 1.0, "uniform")])
def test_maximise_gives_the_x_adv_of_the_loop_it_replaced(norm: str, eps: float, start: str) -> None:
    # The ARD/RSLAD objective: the KL from the teacher's clean soft labels to the student's on x_adv; the digits model
    # plays both roles (a student at temperature 4, as a distillation run sees it).
    model = digits_model()
    x, _ = test_points(48)
    with torch.no_grad():
        teacher_logits = model(x)

    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        return teacher_student_kl(teacher_logits, model(x_adv), student_temperature=4.0)

    x_adv = maximise(model, objective, x, eps=eps, step_size=eps / 4, steps=10, norm=norm,
                     start=start, bn_mode="eval", generator=torch.Generator().manual_seed(5))  # type: ignore[arg-type]
    expected = reference_maximise(model, objective, x, eps=eps, step_size=eps / 4, steps=10, norm=norm, start=start,
                                  seed=5)
    assert not torch.equal(expected, x)
    assert torch.equal(x_adv, expected)
