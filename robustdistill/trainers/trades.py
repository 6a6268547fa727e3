"""TRADES: Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically Principled Trade-off between Robustness
and Accuracy", ICML 2019."""

from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.trainers.adversarial import maximise
from robustdistill.trainers.base import TRAINERS, Trainer
from robustdistill.trainers.config import STRICT, SelectMetric, TrainConfig


@dataclass(config=STRICT)
class TradesConfig(TrainConfig):
    """TRADES (official CIFAR-10 settings): beta 6; x' maximises KL(f(x) || f(x')) with 10 steps of 0.007 in the
    L-inf ball of 0.031 from x + 0.001 N(0, 1), model in eval mode; loss CE(f(x), y) + beta KL(f(x) || f(x'))
    with batchmean KL; SGD 0.1, momentum 0.9, wd 2e-4, 76 epochs, lr x0.1 at 75."""

    beta: float = Field(6.0, ge=0)
    eps: float = Field(0.031, ge=0)
    attack_step_size: float | None = 0.007
    weight_decay: float = Field(2e-4, ge=0)
    epochs: int = Field(76, ge=1)
    lr_milestones: list[int] = Field(default_factory=lambda: [75])
    select_metric: SelectMetric = "robust"


def kl_batchmean(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) summed over classes, averaged over the batch."""
    return nn.functional.kl_div(
        torch.log_softmax(q_logits, dim=1), torch.log_softmax(p_logits, dim=1), reduction="batchmean", log_target=True
    )


@TRAINERS.register("trades")
class TradesTrainer(Trainer):
    """TRADES adversarial training (Zhang et al. 2019)."""

    config_class = TradesConfig
    method = "trades"

    def trades_adversarial(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        was_training = model.training
        model.train(cfg.attack_bn_mode == "train")
        with torch.no_grad():
            clean_logits = model(x)  # in the attack's BatchNorm mode, as the target of the KL it maximises
        model.train(was_training)
        return maximise(model, lambda x_adv: kl_batchmean(clean_logits, model(x_adv)), x, eps=cfg.eps,
                        step_size=cfg.step_size, steps=cfg.attack_steps, norm=cfg.norm, start="normal",
                        bn_mode=cfg.attack_bn_mode, generator=generator)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.trades_adversarial(model, x, generator)
        model.train()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y) + self.config.beta * kl_batchmean(logits, model(x_adv))
        return loss, logits
