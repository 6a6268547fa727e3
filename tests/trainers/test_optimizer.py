"""One optimiser and schedule set-up for every trainer (trainers.base.make_optimizer): the class, its settings and the
learning rate of every epoch, for the step-schedule trainers, GUARD's student and GUARD's squeeze stage (issue 12,
section 1). A changed optimiser (Adam for AdamW, a lost momentum or weight decay) or schedule fails here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from robustdistill import trainers
from robustdistill.models import load_model
from robustdistill.trainers.base import make_optimizer
from robustdistill.trainers.guard import GuardConfig, SqueezeConfig, SqueezeTrainer, squeeze_config

REPO = Path(__file__).resolve().parents[2]


def lrs(optimizer: torch.optim.Optimizer, scheduler: Any, epochs: int) -> list[float]:
    """The learning rate of each epoch, stepping the schedule once per epoch as the trainers do."""
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def built(config: Any) -> tuple[torch.optim.Optimizer, Any]:
    return make_optimizer(torch.nn.Linear(3, 2).parameters(), config)


def test_sgd_with_momentum_and_weight_decay_steps_at_the_milestones() -> None:
    config = trainers.create("standard", recipe=REPO / "defenses" / "digits-standard.toml",
                             overrides=["lr=0.1", "lr_milestones=[2, 3]", "lr_gamma=0.5"]).config
    optimizer, scheduler = built(config)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 5e-4, False)
    assert lrs(optimizer, scheduler, 4) == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_adam_is_adam_not_adamw() -> None:
    config = trainers.create("pgd-at", recipe=REPO / "defenses" / "digits-pgd-at.toml",
                             overrides=["weight_decay=0.01", "lr_milestones=[1]"]).config
    optimizer, scheduler = built(config)
    assert type(optimizer) is torch.optim.Adam  # L2 in the gradient; AdamW would decouple the decay
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert lrs(optimizer, scheduler, 2) == pytest.approx([config.lr, config.lr * config.lr_gamma])


def test_guards_student_has_adamw_with_cosine_decay_over_its_epochs() -> None:
    config = GuardConfig(epochs=4, device="cpu")  # the official relabel step's defaults: AdamW, lr 0.001, cosine
    optimizer, scheduler = built(config)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    cosine = [0.001 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert lrs(optimizer, scheduler, 4) == pytest.approx(cosine)


def test_guards_student_with_a_step_schedule_steps_at_its_milestones() -> None:
    config = GuardConfig(epochs=3, optimizer="sgd", lr=0.2, lr_schedule="multistep", lr_milestones=[1], lr_gamma=0.1)
    optimizer, scheduler = built(config)
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["momentum"] == 0.9
    assert lrs(optimizer, scheduler, 3) == pytest.approx([0.2, 0.02, 0.02])


def test_the_squeeze_stage_trains_with_sgd_and_cosine_recorded_per_epoch(tmp_path: Path) -> None:
    """Through a real (tiny) squeeze on the digits: the optimiser the trainer builds is the one the history shows."""
    guard = GuardConfig(squeeze={"arch": "cnn-bn", "arch_params": {"width": 8, "hidden": 32}, "epochs": 3, "lr": 0.05,
                                 "augment": "none"}, device="cpu")
    config = squeeze_config(guard)
    optimizer, _ = SqueezeTrainer(config).make_optimizer(torch.nn.Linear(3, 2))
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["weight_decay"] == 5e-4
    path = SqueezeTrainer(config).fit(tmp_path / "squeezed")
    history = load_model(path).provenance["history"]
    assert [r["lr"] for r in history] == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
