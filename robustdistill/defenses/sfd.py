"""Score Forgetting Distillation (``sfd``): a one-step generator that cannot draw one class, distilled data-free.

    robustdistill train sfd --config defenses/digits-sfd.toml --out checkpoints/digits-sfd

SFD (Chen, Zhang, Zhou, ICLR 2025) is Score identity Distillation (:mod:`robustdistill.trainers.sid`) with a second,
"forgetting" term. Teacher f_phi (frozen), fake score f_psi and one-step generator G_theta start from the pretrained
class-conditional DDPM; each step

1. trains the fake score on the generator's samples of the remaining classes (weight ``fake_remain_weight``) and of
   the forgotten class (``fake_forget_weight``): lr E_c~remain ||eps_psi(x_t, t, c) - eps||^2
   + lf E ||eps_psi(x_t, t, c_f) - eps||^2, the samples detached;
2. moves the generator along SiD's loss for the remaining classes, where teacher and fake score are asked about the
   class generated, plus - weighted by ``forget_weight`` - SiD's loss for samples of the forgotten class c_f where
   the TEACHER is asked about the override class c_o and the fake score about c_f:
   lambda_r E_c L_SiD(G(z, c); c, c) + lambda_f E L_SiD(G(z, c_f); c_T = c_o, c_F = c_f).
   The second term drives p_theta(x | c_f) toward the teacher's p(x | c_o): the generator "forgets" c_f by drawing
   c_o for it, while the remaining classes keep following the teacher.

Only class labels are used (data-free), the remaining classes drawn uniformly, every term on a full batch of its
own, as in the official code. ``override_class = -1`` draws a random remaining class per sample instead of one
fixed class (the official "rand" pseudo-labels). The two-stage variant starts the generator from a plain SiD
generator of the same teacher (``generator``, made by ``generator_recipe`` when missing) and then runs SFD.

Differences from the official code, on purpose: gradients are clipped by global norm (the SiD trainer's), where the
official SFD clips each gradient value at 1.0; and in the two-stage variant the teacher is always the pretrained
DDPM, where the official loader reuses the first stage's fake score network for it.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import pydantic
import torch
from pydantic.dataclasses import dataclass

from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import checkpoint_sha256
from robustdistill.models.diffusion import DiffusionModel, load_diffusion_model
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT
from robustdistill.trainers.sid import Conditions, SiDConfig, SiDTrainer, copy_of, ensure_diffusion_teacher
from robustdistill.trainers.teachers import check_teacher

log = logging.getLogger(__name__)

RANDOM_OVERRIDE = -1


@dataclass(config=STRICT)
class SFDConfig(SiDConfig):
    """SFD's settings: SiD's (the paper's CIFAR-10 ones by default) plus what to forget. Defaults follow the official
    CIFAR-10 configuration (override class 1, forgetting terms weighted 0.01); a tiny digits run needs more weight
    on forgetting (defenses/digits-sfd.toml says why)."""

    PATH_FIELDS = ("teacher", "teacher_recipe", "generator", "generator_recipe")

    forget_class: int = pydantic.Field(0, ge=0)
    override_class: int = pydantic.Field(1, ge=RANDOM_OVERRIDE)  # -1: a random remaining class per sample
    fake_remain_weight: float = pydantic.Field(1.0, ge=0)
    fake_forget_weight: float = pydantic.Field(0.01, ge=0)
    remain_weight: float = pydantic.Field(1.0, ge=0)
    forget_weight: float = pydantic.Field(0.01, ge=0)
    # The two-stage variant: start the generator from a SiD generator of the same teacher (stage 1).
    generator: str | None = None
    generator_recipe: str | None = None

    def __post_init__(self) -> None:
        if self.override_class == self.forget_class:
            raise UserInputError("override_class", f"{self.override_class} is the class to forget",
                                 "override with another class (the paper's CIFAR-10 run uses 1), or -1 for random ones")
        if self.forget_weight == 0 and self.fake_forget_weight == 0:
            raise UserInputError("forget_weight", "both forgetting weights are 0: that is plain SiD",
                                 "set forget_weight > 0 (the paper: 0.01), or train sid")
        if self.remain_weight == 0:
            raise UserInputError("remain_weight", "0 drops the remaining classes from the generator's loss",
                                 "keep it positive (the paper: 1.0)")


def remaining_classes(num_classes: int, forget: int) -> torch.Tensor:
    return torch.tensor([c for c in range(num_classes) if c != forget], dtype=torch.long)


@TRAINERS.register("sfd")
class SFDTrainer(SiDTrainer):
    """Score Forgetting Distillation of a class-conditional DDPM into a one-step generator that forgets a class."""

    config_class: ClassVar[type[SFDConfig]] = SFDConfig
    method: ClassVar[str] = "sfd"
    config: SFDConfig

    def check_inputs(self) -> None:
        super().check_inputs()
        cfg = self.config
        if cfg.generator is not None:
            check_teacher(cfg.generator, cfg.generator_recipe, field="generator", what="path/to/sid-generator")
        elif cfg.generator_recipe is not None:
            raise UserInputError("generator_recipe", "a recipe without a generator path to write it to",
                                 "set generator = 'checkpoints/digits-sid' too (the two-stage variant), or drop it")

    def load_teacher(self) -> DiffusionModel:
        teacher = super().load_teacher()
        cfg = self.config
        for name in ("forget_class", "override_class"):
            value = getattr(cfg, name)
            if value >= self.num_classes:
                raise UserInputError(name, f"{value} is not a class of the teacher (0-{self.num_classes - 1})",
                                     f"choose a class from 0 to {self.num_classes - 1}")
        if self.num_classes < 2:
            raise UserInputError("teacher", f"{teacher.path} has {self.num_classes} class: nothing would remain",
                                 "forget one class of a teacher with several")
        self.remaining = remaining_classes(self.num_classes, cfg.forget_class)
        self.stage_one = self._load_stage_one(teacher) if cfg.generator is not None else None
        return teacher

    def _load_stage_one(self, teacher: DiffusionModel) -> DiffusionModel:
        """The SiD generator of the two-stage variant; refused unless it is a one-step generator distilled from this
        very teacher, at this t_init."""
        cfg = self.config
        path = ensure_diffusion_teacher(cfg.generator or "", cfg.generator_recipe, field="generator")
        model = load_diffusion_model(path, device=self.device)
        teacher_sha = self.parents[0]["sha256"]
        parent_shas = {parent.get("sha256") for parent in model.provenance.get("parents") or []
                       if isinstance(parent, dict)}
        if model.one_step_t is None:
            raise UserInputError("generator", f"{path} is not a one-step generator",
                                 "point generator at a sid trainer's output (stage 1 of the two-stage variant)")
        if teacher_sha not in parent_shas:
            raise UserInputError("generator", f"{path} was not distilled from the teacher {cfg.teacher}",
                                 "use a SiD generator of this teacher, or retrain it from generator_recipe")
        if model.one_step_t != cfg.t_init:
            raise UserInputError("t_init", f"{cfg.t_init}, but the stage-1 generator {path} runs at t_init "
                                 f"{model.one_step_t}", f"set t_init = {model.one_step_t}")
        self.parents.append({"role": "stage-1 generator", "path": str(path), "sha256": checkpoint_sha256(path)})
        return model

    def start_generator(self, teacher: DiffusionModel) -> DiffusionModel:
        if self.stage_one is None:
            return copy_of(teacher)
        generator = copy_of(teacher)
        generator.unet.load_state_dict(self.stage_one.unet.state_dict())
        return generator

    # --- what each step is asked ------------------------------------------------------------------------------
    def remaining_labels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, len(self.remaining), (batch,), generator=generator)
        return self.remaining[pick].to(self.device)

    def override_labels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if self.config.override_class == RANDOM_OVERRIDE:
            return self.remaining_labels(batch, generator)
        return torch.full((batch,), self.config.override_class, dtype=torch.long, device=self.device)

    def terms(self, network: str, batch: int, generator: torch.Generator) -> list[tuple[float, Conditions]]:
        """Remaining classes (teacher and fake score asked about the class generated), then the forgotten class
        (the fake score asked about it; the teacher, in the generator's update, about the override class)."""
        cfg = self.config
        remain_weight, forget_weight = ((cfg.fake_remain_weight, cfg.fake_forget_weight) if network == "fake"
                                        else (cfg.remain_weight, cfg.forget_weight))
        labels = self.remaining_labels(batch, generator)
        terms = [(remain_weight, Conditions(labels, labels, labels))] if remain_weight > 0 else []
        if forget_weight > 0:
            forget = torch.full((batch,), cfg.forget_class, dtype=torch.long, device=self.device)
            teacher = self.override_labels(batch, generator) if network == "generator" else forget
            terms.append((forget_weight, Conditions(forget, teacher, forget)))
        return terms

    def extra_provenance(self) -> dict[str, Any]:
        cfg = self.config
        return {"unlearning": {
            "method": "sfd", "forget_class": cfg.forget_class,
            "override_class": None if cfg.override_class == RANDOM_OVERRIDE else cfg.override_class,
            "override": "random remaining class" if cfg.override_class == RANDOM_OVERRIDE else "fixed class",
            "remaining_classes": [int(c) for c in self.remaining],
            "stages": 2 if self.stage_one is not None else 1,
        }}
