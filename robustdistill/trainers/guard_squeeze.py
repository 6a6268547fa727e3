"""GUARD / SRe2L stage 1, squeeze: training the BatchNorm model on the real data, with GUARD's curvature regulariser.

Here live the squeeze stage's settings (``[squeeze]`` in a recipe, :class:`SqueezeSettings`), its trainer config
(:class:`SqueezeConfig`, recorded in the squeezed checkpoint), :class:`SqueezeTrainer` (cross-entropy plus the
curvature penalty of :mod:`robustdistill.trainers.curvature`, computed in eval mode in the network's normalised input
space). Its optimiser and schedule come from :func:`robustdistill.trainers.base.make_optimizer`, as every trainer's.
The whole pipeline runs in :mod:`robustdistill.trainers.guard`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.data import ImageSplit
from robustdistill.models import Classifier
from robustdistill.trainers.base import Trainer
from robustdistill.trainers.config import STRICT, TrainConfig
from robustdistill.trainers.curvature import curvature_penalty, simple_curvature_penalty

Curvature = Literal["double-backprop", "simple", "none"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["multistep", "cosine"]


@dataclass(config=STRICT)
class SqueezeSettings:
    """The squeeze model's training (``[squeeze]`` in a recipe). Defaults: GUARD's pretrain_cifar.py - ResNet-18,
    SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine over 200 epochs, batch 128, crop + flip, the last epoch
    kept. Data, normalisation, seed and device are the recipe's own."""

    arch: str = "resnet18-cifar"
    arch_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Schedule = "cosine"
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = Field(0.1, gt=0, le=1)
    augment: Literal["crop-flip", "shift", "none"] = "crop-flip"
    select_metric: Literal["clean", "robust", "mean", "last"] = "last"
    val_robust: bool = False


@dataclass(config=STRICT)
class SqueezeConfig(TrainConfig):
    """The squeeze stage as a trainer config (built from a GuardConfig; recorded in the squeezed checkpoint)."""

    optimizer: Optimizer = "sgd"  # type: ignore[assignment]
    lr_schedule: Schedule = "cosine"
    curvature: Curvature = "none"
    curvature_weight: float = Field(0.0, ge=0)
    curvature_h: float = Field(3.0, gt=0)


class SqueezeTrainer(Trainer):
    """The squeeze stage: cross-entropy on the real data, plus GUARD's curvature regulariser unless it is "none"."""

    config_class = SqueezeConfig
    method = "squeeze"
    data_parallel = False  # GUARD's stage: one process, as the whole pipeline

    def __init__(self, config: SqueezeConfig) -> None:
        super().__init__(config)
        self._penalty_sum, self._penalty_n = 0.0, 0

    def batch_loss(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        cfg = self.config
        if cfg.curvature == "none" or cfg.curvature_weight == 0:
            return loss, logits
        # Eval mode (BatchNorm uses, and does not update, its running statistics) and the network's normalised
        # input space: both as in the official pretrain_cifar.py, whose inputs are already normalised.
        model.eval()
        network = model.network

        def per_point(u: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(network(u), y, reduction="none")

        u = model.normalize(x).detach()
        penalty_fn = curvature_penalty if cfg.curvature == "double-backprop" else simple_curvature_penalty
        penalty = penalty_fn(per_point, u, h=cfg.curvature_h, weight=cfg.curvature_weight)
        model.train()
        self._penalty_sum += float(penalty.detach()) * len(y)
        self._penalty_n += len(y)
        return loss + penalty, logits

    def train_epoch(self, model: Classifier, optimizer: torch.optim.Optimizer, train: ImageSplit, epoch: int) -> dict[str, float]:
        self._penalty_sum, self._penalty_n = 0.0, 0
        record = super().train_epoch(model, optimizer, train, epoch)
        if self._penalty_n:
            record["curvature_penalty"] = self._penalty_sum / self._penalty_n
        return record
