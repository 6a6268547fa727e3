"""Defensive distillation: Papernot, McDaniel, Wu, Jha and Swami, "Distillation as a Defense to Adversarial
Perturbations against Deep Neural Networks", IEEE S&P 2016.

Known to mask gradients rather than add robustness (Carlini and Wagner 2017): shipped as a baseline so the audit
can show that its FGSM robustness is an artefact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.data import ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.trainers import distributed
from robustdistill.trainers.base import TRAINERS, EpochCallback, Trainer, soft_cross_entropy
from robustdistill.trainers.config import STRICT, TrainConfig, config_to_dict
from robustdistill.trainers.teachers import load_teacher

log = logging.getLogger(__name__)


@dataclass(config=STRICT)
class DefensiveDistillationConfig(TrainConfig):
    """Papernot et al. 2016: a teacher trained with softmax at temperature T, then a student (same architecture
    by default) trained on the teacher's soft labels at the same T, deployed at T = 1. T = 100; CIFAR-10
    settings of the paper: SGD lr 0.01, momentum 0.9, batch 128, 50 epochs.

    ``teacher``: an existing temperature-T teacher to reuse; if it does not exist, the teacher is trained first
    with this config and written there (default: ``<out>-teacher``).
    """

    PATH_FIELDS = ("teacher",)

    temperature: float = Field(100.0, gt=0)
    teacher: str | None = None
    teacher_arch: str | None = None  # default: the student's architecture, as in the paper
    lr: float = Field(0.01, gt=0)
    epochs: int = Field(50, ge=1)
    lr_milestones: list[int] = Field(default_factory=list)


class TemperatureTeacherTrainer(Trainer):
    """Stage 1: cross-entropy of softmax(logits / T) on hard labels."""

    method = "defensive-distillation-teacher"

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return nn.functional.cross_entropy(logits / self.config.temperature, y), logits


@TRAINERS.register("defensive-distillation")
class DefensiveDistillationTrainer(Trainer):
    """Defensive distillation (Papernot et al. 2016): teacher and student trained at temperature T, deployed at T = 1.

    Stage 1 trains the teacher at T (unless one is given); stage 2 trains the student on softmax(t / T) with its
    own softmax(s / T)."""

    config_class = DefensiveDistillationConfig
    method = "defensive-distillation"

    def fit(self, out: str | Path, *, resume: bool = False, on_epoch_end: EpochCallback | None = None,
            train_data: ImageSplit | None = None) -> Path:
        cfg = self.config
        teacher_path = Path(cfg.teacher) if cfg.teacher else Path(out).with_name(Path(out).name + "-teacher")
        with distributed.agreement():  # under torchrun: every process stops, the error said once
            if cfg.teacher and not (teacher_path / "config.json").exists():
                raise UserInputError("teacher", f"no checkpoint at {teacher_path}", "leave teacher unset to train one, or fix the path")
        if not cfg.teacher:  # (under torchrun the teacher trains data-parallel too: every process gets here)
            teacher_config = self._teacher_config()
            if not self._is_trained_with(teacher_path, teacher_config):
                log.info("training the temperature-%g teacher into %s", cfg.temperature, teacher_path)
                TemperatureTeacherTrainer(teacher_config).fit(teacher_path, resume=resume, train_data=train_data)
        self.teacher_path = teacher_path
        return super().fit(out, resume=resume, on_epoch_end=on_epoch_end, train_data=train_data)

    def _teacher_config(self) -> DefensiveDistillationConfig:
        raw = config_to_dict(self.config)
        if self.config.teacher_arch:
            raw["arch"] = self.config.teacher_arch
        raw["seed"] = self.config.seed + 1  # a different initialisation from the student
        return DefensiveDistillationConfig(**raw)

    @staticmethod
    def _is_trained_with(path: Path, config: DefensiveDistillationConfig) -> bool:
        """A teacher left by an earlier run is reused only if it was trained with exactly this config."""
        try:
            recipe = json.loads((path / "config.json").read_text())["provenance"]["recipe"]
        except (OSError, KeyError, ValueError):
            return False
        return recipe == {"method": TemperatureTeacherTrainer.method, "config": config_to_dict(config)}

    def prepare(self, train: ImageSplit) -> None:
        self.parent("teacher", self.teacher_path)
        self.teacher = load_teacher(self.teacher_path).to(self.device)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        temperature = self.config.temperature
        with torch.no_grad():
            soft_labels = torch.softmax(self.teacher(x) / temperature, dim=1)
        logits = model(x)
        return soft_cross_entropy(logits / temperature, soft_labels), logits

    def extra_provenance(self) -> dict[str, Any]:
        return {"deployed_temperature": 1.0, "training_temperature": self.config.temperature}
