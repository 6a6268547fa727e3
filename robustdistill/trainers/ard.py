"""Adversarially robust distillation: ARD (Goldblum, Fowl, Feizi and Goldstein, AAAI 2020), RSLAD (Zi, Zhao, Ma
and Jiang, ICCV 2021) and AdaAD (Huang et al., CVPR 2023). One frozen teacher, a student trained on adversarial
examples crafted against itself; they differ in what the attack maximises and what the student matches.

Every method selects its checkpoint on the val split; the official ARD and RSLAD scripts keep the epochs that do
best on the TEST set, which we do not copy.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.trainers.adversarial import AttackStart, KLReduction, forward_both, maximise, teacher_student_kl
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT, SelectMetric, TrainConfig
from robustdistill.trainers.kd import DistillationTrainer


@dataclass(config=STRICT)
class RobustDistillationConfig(TrainConfig):
    """Settings the three methods share: one teacher (a checkpoint, or trained first from ``teacher_recipe``), the
    papers' CIFAR-10 optimisation (SGD 0.1, momentum 0.9, wd 2e-4) and the training attack (eps 8/255, step 2/255,
    10 steps); selection on val by (clean + PGD) / 2."""

    PATH_FIELDS = ("teacher", "teacher_recipe")

    teacher: str = ""
    teacher_recipe: str | None = None

    weight_decay: float = Field(2e-4, ge=0)
    kl_reduction: KLReduction = "mean"
    attack_start: AttackStart = "normal"
    select_metric: SelectMetric = "mean"


@dataclass(config=STRICT)
class ARDConfig(RobustDistillationConfig):
    """ARD: alpha * tau^2 * KL(σ(T(x)/tau) || σ(S(x')/tau)) + (1 - alpha) * CE(S(x), y), x' = PGD-10 on the
    student's cross-entropy from a uniform start, student BatchNorm in TRAIN mode during the attack (as the
    official code, which attacks the model in training mode); tau = 30, alpha = 1, mean KL; 200 epochs, lr x0.1 at
    100 and 150."""

    temperature: float = Field(30.0, gt=0)
    alpha: float = Field(1.0, ge=0, le=1)
    attack_bn_mode: Literal["eval", "train"] = "train"
    attack_start: AttackStart = "uniform"
    epochs: int = Field(200, ge=1)
    lr_milestones: list[int] = Field(default_factory=lambda: [100, 150])


@dataclass(config=STRICT)
class RSLADConfig(RobustDistillationConfig):
    """RSLAD: adv_weight * KL(T(x) || S(x')) + (1 - adv_weight) * KL(T(x) || S(x)) with adv_weight = 5/6: the
    teacher's soft labels on CLEAN inputs supervise both terms; x' maximises KL(T(x) || S(x')) from x + 0.001 N(0, 1),
    student in eval mode; mean KL; 300 epochs, lr x0.1 at 215, 260, 285."""

    adv_weight: float = Field(5 / 6, ge=0, le=1)
    epochs: int = Field(300, ge=1)
    lr_milestones: list[int] = Field(default_factory=lambda: [215, 260, 285])


@dataclass(config=STRICT)
class AdaADConfig(RobustDistillationConfig):
    """AdaAD: x' maximises KL(T(x') || S(x')) - the teacher is queried at every attack step and the gradient flows
    through BOTH models into x', so the attack looks for where the two disagree - from x + 0.001 N(0, 1), student in
    eval mode; loss alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x)) with alpha = 1 and the teacher
    frozen; 200 epochs. KL reduction: "mean" (over batch x classes), the public code's CIFAR-10 loss
    (``nn.KLDivLoss()``'s default); its CIFAR-100 branch sums over classes and divides by the batch ("batchmean")."""

    alpha: float = Field(1.0, ge=0, le=1)
    kl_reduction: KLReduction = "mean"
    epochs: int = Field(200, ge=1)
    lr_milestones: list[int] = Field(default_factory=lambda: [100, 150])


class RobustDistillationTrainer(DistillationTrainer):
    """Crafts x' against the student with :func:`maximise`, per the method's objective."""

    def attack(self, model: nn.Module, x: torch.Tensor, objective, generator: torch.Generator) -> torch.Tensor:  # type: ignore[no-untyped-def]
        cfg = self.config
        return maximise(model, objective, x, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps,
                        norm=cfg.norm, start=cfg.attack_start, bn_mode=cfg.attack_bn_mode, generator=generator)

    def kl(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return teacher_student_kl(teacher_logits, student_logits, teacher_temperature=temperature,
                                  student_temperature=temperature, reduction=self.config.kl_reduction)


@TRAINERS.register("ard")
class ARDTrainer(RobustDistillationTrainer):
    """Adversarially Robust Distillation (Goldblum et al., AAAI 2020)."""

    config_class = ARDConfig
    method = "ard"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config

        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(model(x_adv), y, reduction="sum")

        x_adv = self.attack(model, x, objective, generator)
        teacher_logits = self.teacher_logits(x)
        model.train()
        adv_logits = model(x_adv)
        loss = cfg.alpha * cfg.temperature**2 * self.kl(teacher_logits, adv_logits, cfg.temperature)
        if cfg.alpha < 1:
            loss = loss + (1 - cfg.alpha) * nn.functional.cross_entropy(model(x), y)
        return loss, adv_logits


@TRAINERS.register("rslad")
class RSLADTrainer(RobustDistillationTrainer):
    """Robust Soft Label Adversarial Distillation (Zi et al., ICCV 2021)."""

    config_class = RSLADConfig
    method = "rslad"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        teacher_logits = self.teacher_logits(x)

        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            return teacher_student_kl(teacher_logits, model(x_adv), reduction="batchmean") * len(x_adv)

        x_adv = self.attack(model, x, objective, generator)
        model.train()
        adv_logits, nat_logits = forward_both(model, x_adv, x)
        loss = cfg.adv_weight * self.kl(teacher_logits, adv_logits) + (1 - cfg.adv_weight) * self.kl(teacher_logits, nat_logits)
        return loss, adv_logits


@TRAINERS.register("adaad")
class AdaADTrainer(RobustDistillationTrainer):
    """Adaptive Adversarial Distillation (Huang et al., CVPR 2023)."""

    config_class = AdaADConfig
    method = "adaad"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config

        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            # The eager teacher, not the traced inference graph: as in the public code, the input gradient flows
            # through the teacher too (its parameters are frozen). Summed over the batch and classes, as there.
            return teacher_student_kl(self.teacher(x_adv), model(x_adv), reduction="batchmean") * len(x_adv)

        x_adv = self.attack(model, x, objective, generator)
        teacher_adv = self.teacher_logits(x_adv)
        model.train()
        adv_logits = model(x_adv)
        loss = cfg.alpha * self.kl(teacher_adv, adv_logits)
        if cfg.alpha < 1:
            teacher_clean = self.teacher_logits(x)
            loss = loss + (1 - cfg.alpha) * self.kl(teacher_clean, model(x))
        return loss, adv_logits
