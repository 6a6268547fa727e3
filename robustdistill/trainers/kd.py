"""Knowledge distillation: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.data import ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier
from robustdistill.trainers.base import TRAINERS, Trainer
from robustdistill.trainers.config import STRICT, TrainConfig
from robustdistill.trainers.teachers import check_teacher, ensure_teacher, inference_forward, load_teacher


@dataclass(config=STRICT)
class KDConfig(TrainConfig):
    """Hinton KD: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-target ones when T changes
    (Hinton et al. 2015, section 2). T = 4 and alpha = 0.9 (soft targets dominant, as the paper recommends a
    considerably lower weight on the hard targets).
    """

    PATH_FIELDS = ("teacher", "teacher_recipe")

    teacher: str = ""
    teacher_recipe: str | None = None
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    soft = nn.functional.kl_div(
        torch.log_softmax(student_logits / temperature, dim=1),
        torch.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = nn.functional.cross_entropy(student_logits, y)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


class DistillationTrainer(Trainer):
    """A trainer with one frozen teacher, named by ``teacher`` (or trained from ``teacher_recipe``)."""

    teacher: Classifier
    teacher_logits: Callable[[torch.Tensor], torch.Tensor]

    def check_inputs(self) -> None:
        check_teacher(self.config.teacher, self.config.teacher_recipe)

    def prepare(self, train: ImageSplit) -> None:
        cfg = self.config
        path = ensure_teacher(cfg.teacher, cfg.teacher_recipe)
        self.parent("teacher", path)
        self.teacher = load_teacher(path).to(self.device)
        if self.teacher.num_classes != train.num_classes:
            raise UserInputError("teacher", f"the teacher has {self.teacher.num_classes} classes, the data {train.num_classes}", "use a teacher trained on this dataset")
        # The teacher's outputs for loss terms and attack objectives that need no gradient through the teacher
        # (AdaAD's attack, which does, calls the eager self.teacher).
        self.teacher_logits = inference_forward(self.teacher, train.x[: cfg.batch_size].to(self.device))


@TRAINERS.register("kd")
class KDTrainer(DistillationTrainer):
    """Knowledge distillation from a teacher's softened logits (Hinton et al. 2015)."""

    config_class = KDConfig
    method = "kd"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_logits = self.teacher_logits(x)
        logits = model(x)
        return kd_loss(logits, teacher_logits, y, self.config.temperature, self.config.alpha), logits
