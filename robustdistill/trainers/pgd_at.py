"""PGD adversarial training: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018."""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.trainers.base import TRAINERS, Trainer
from robustdistill.trainers.config import STRICT, SelectMetric, TrainConfig


@dataclass(config=STRICT)
class PGDATConfig(TrainConfig):
    """Madry PGD-AT: minimise CE(f(x'), y), x' = PGD-10 (step 2/255) in the L-inf ball of 8/255 from a random
    start, BatchNorm in eval mode during the attack. SGD 0.1, wd 5e-4, 200 epochs, lr x0.1 at 100/150.
    Checkpoint selected on val robust accuracy (guards against robust overfitting, Rice et al. 2020)."""

    select_metric: SelectMetric = "robust"


@TRAINERS.register("pgd-at")
class PGDATTrainer(Trainer):
    """Adversarial training with PGD examples (Madry et al. 2018)."""

    config_class = PGDATConfig
    method = "pgd-at"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.adversarial(model, x, y, generator)
        model.train()
        logits = model(x_adv)
        return nn.functional.cross_entropy(logits, y), logits
