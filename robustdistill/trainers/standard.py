"""Standard training: cross-entropy on clean inputs."""

from __future__ import annotations

import torch
from torch import nn
from pydantic.dataclasses import dataclass

from robustdistill.trainers.base import TRAINERS, Trainer
from robustdistill.trainers.config import STRICT, TrainConfig


@dataclass(config=STRICT)
class StandardConfig(TrainConfig):
    """Cross-entropy training. Defaults: SGD 0.1, momentum 0.9, weight decay 5e-4, 200 epochs, lr x0.1 at 100
    and 150, crop+flip (the usual CIFAR-10 ResNet-18 recipe); selected on clean val accuracy."""


@TRAINERS.register("standard")
class StandardTrainer(Trainer):
    """Standard (non-robust) training with cross-entropy."""

    config_class = StandardConfig
    method = "standard"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return nn.functional.cross_entropy(logits, y), logits
