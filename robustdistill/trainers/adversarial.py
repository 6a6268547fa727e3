"""Pieces the adversarial (distillation) trainers share: the KL between teacher and student, and the inner
maximisation that crafts the training attack for an arbitrary objective.

Two KL reductions appear in the papers' official code and change the loss scale by the number of classes C:
``"mean"`` averages over batch x classes (PyTorch's ``KLDivLoss()`` default, used by ARD, RSLAD and MTARD) and
``"batchmean"`` sums over classes and averages over the batch (the mathematical KL per example; TRADES). Every
trainer names its reduction as a config field with its paper's value as the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from robustdistill.attacks.base import project
from robustdistill.attacks.pgd import projected_ascent, random_start

KLReduction = Literal["mean", "batchmean"]
AttackStart = Literal["uniform", "normal"]  # uniform in the ball (Madry, ARD) or x + 0.001 N(0, 1) (TRADES, RSLAD)


def teacher_student_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    *,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
    reduction: KLReduction = "mean",
) -> torch.Tensor:
    """KL(softmax(t / tau_t) || softmax(s / tau_s)): the teacher's distribution first, as in every paper here."""
    log_p = torch.log_softmax(teacher_logits / teacher_temperature, dim=1)
    log_q = torch.log_softmax(student_logits / student_temperature, dim=1)
    per_point = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if reduction == "batchmean":
        return per_point.mean()
    if reduction == "mean":
        return per_point.mean() / teacher_logits.shape[1]
    raise ValueError(f"unknown KL reduction {reduction!r}")


def attack_start(x: torch.Tensor, kind: AttackStart, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """The attack's starting point; noise is drawn on the CPU from the trainer's generator (reproducible on any
    device), then moved to x's device."""
    cpu = x.detach().cpu()
    if kind == "uniform":
        return random_start(cpu, eps, norm, generator).to(x.device)  # type: ignore[arg-type]
    noise = torch.randn(cpu.shape, generator=generator)
    return project(x + 0.001 * noise.to(x.device), x, eps, norm)


def maximise(
    model: nn.Module,
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str,
    start: AttackStart,
    bn_mode: Literal["eval", "train"],
    generator: torch.Generator,
) -> torch.Tensor:
    """Projected signed (L-inf) or normalised (L2) gradient ascent of ``objective(x_adv)`` (a scalar) in the eps-ball
    around x, inside [0, 1], with ``model`` in the given BatchNorm mode; the model's mode is restored after."""
    was_training = model.training
    model.train(bn_mode == "train")
    try:
        return projected_ascent(objective, x, attack_start(x, start, eps, norm, generator), eps=eps,
                                step_size=step_size, steps=steps, norm=norm)  # type: ignore[arg-type]
    finally:
        model.train(was_training)


def mixes_samples(model: nn.Module) -> bool:
    """Whether a train-mode forward pass couples the samples of a batch (BatchNorm's batch statistics)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def forward_both(model: nn.Module, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model(first), model(second)). One pass over the two batches stacked when no layer mixes samples (the same
    numbers, one pass's overhead saved); two passes otherwise, so BatchNorm sees each batch alone, as in the papers'
    code."""
    if mixes_samples(model):
        return model(first), model(second)
    both = model(torch.cat([first, second]))
    return both[: len(first)], both[len(first):]
