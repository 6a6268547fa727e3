"""Score identity Distillation (``sid``): a one-step generator distilled from a class-conditional DDPM.

    robustdistill train sid --config defenses/digits-sid.toml --out checkpoints/digits-sid

SiD (Zhou et al., ICML 2024) uses three copies of the teacher's UNet: the frozen teacher f_phi, a fake score
network f_psi that learns the score of the generator's own samples, and the generator G_theta, run once at t_init
(robustdistill.models.one_step). Each step alternates
1. a fake-score step: eps-prediction MSE of f_psi on the generator's samples (detached), noised at
   t ~ UniformInt[t_min, t_max);
2. a generator step: L = sum_pixels (f_phi - f_psi) * ((f_phi - x_g) - alpha (f_phi - f_psi)) / omega with
   omega = stopgrad(mean_pixels |f_phi - x_g|), f the denoised estimates at a fresh x_t; teacher and fake score
   are frozen, but the gradient flows through their input x_t back to the generator.
It is data-free: only class labels, drawn uniformly, are used. The output is a diffusers directory (the EMA of the
generator's UNet + the teacher's scheduler) whose robustdistill.json says ``one_step.t_init``.

SFD (score forgetting distillation) extends this trainer: :meth:`SiDTrainer.conditions` decides, per step, which
class the generator makes and which class the teacher and the fake score are asked about, and
:func:`generator_loss` / :func:`fake_score_loss` take those conditions separately.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import torch
from pydantic.dataclasses import dataclass

from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import checkpoint_sha256
from robustdistill.models.diffusion import DiffusionModel, load_diffusion_model
from robustdistill.models.one_step import denoised, one_step_generate
from robustdistill.progress import WorkProgress
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT
from robustdistill.trainers.diffusion_base import STATE_FILE, DiffusionTrainer, optimiser_step, set_trainable
from robustdistill.trainers.teachers import check_teacher
from robustdistill.utils import derived_seed, seed_everything

log = logging.getLogger(__name__)



@dataclass(config=STRICT)
class SiDConfig:
    """SiD's settings. Defaults are the paper's CIFAR-10 ones (as used by SFD for a 1000-step DDPM); a tiny
    digits run needs a larger learning rate and fewer steps (defenses/digits-sid.toml says why)."""

    PATH_FIELDS = ("teacher", "teacher_recipe")

    teacher: str = ""  # a class-conditional DDPM directory (the ddpm trainer's output)
    teacher_recipe: str | None = None  # trains the teacher first when it is missing
    epochs: int = pydantic.Field(10, ge=1)  # a block of steps: one history record and one resumable state each
    steps_per_epoch: int = pydantic.Field(100, ge=1)  # alternating (fake score, generator) steps per epoch
    batch_size: int = pydantic.Field(128, ge=1, le=4096)
    lr: float = pydantic.Field(1e-5, gt=0)  # generator
    fake_lr: float | None = pydantic.Field(None, gt=0)  # fake score network; None: lr (the paper uses one rate)
    adam_betas: tuple[float, float] = (0.0, 0.999)
    grad_clip: float | None = pydantic.Field(1.0, gt=0)  # max global gradient norm per network; None: no clip
    ema: float | None = pydantic.Field(0.9999, ge=0, lt=1)  # EMA decay of the generator saved; None: no EMA
    alpha: float = pydantic.Field(1.2, ge=0, le=10)
    t_min: int = pydantic.Field(38, ge=0)
    t_init: int = pydantic.Field(440, ge=0)
    t_max: int = pydantic.Field(712, ge=1)
    seed: int = 0
    device: str = "auto"


@plain_dataclass
class Conditions:
    """Class labels of one step: what the generator makes, and what the teacher and fake score are asked about
    (all three equal in SiD; SFD asks the teacher about an override class for the forgotten ones)."""

    generator: torch.Tensor
    teacher: torch.Tensor
    fake: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# Losses


def sid_loss(f_teacher: torch.Tensor, f_fake: torch.Tensor, x_g: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD's generator loss from the denoised estimates, per sample summed over pixels, averaged over the batch:
    (f_phi - f_psi) * ((f_phi - x_g) - alpha (f_phi - f_psi)) / omega, omega = stopgrad(mean |f_phi - x_g|) per
    sample, clamped at 1e-5 (the normalisation keeps the gradient's scale independent of how far x_g is)."""
    dims = tuple(range(1, x_g.dim()))
    omega = (f_teacher - x_g).abs().mean(dim=dims, keepdim=True).clamp_min(1e-5).detach()
    gap = f_teacher - f_fake
    per_pixel = gap * ((f_teacher - x_g) - alpha * gap) / omega
    return per_pixel.sum(dim=dims).mean()


def generator_loss(teacher: DiffusionModel, fake: DiffusionModel, x_g: torch.Tensor, conditions: Conditions,
                   t: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`sid_loss` at x_t = sqrt(abar_t) x_g + sqrt(1 - abar_t) eps (with x_g's gradient), the teacher asked
    about ``conditions.teacher`` and the fake score about ``conditions.fake``."""
    from robustdistill.models.diffusion_sampling import add_noise

    x_t = add_noise(teacher, x_g, eps, t)
    f_teacher = denoised(teacher, x_t, t, conditions.teacher)
    f_fake = denoised(fake, x_t, t, conditions.fake)
    return sid_loss(f_teacher, f_fake, x_g, alpha)


def fake_score_loss(fake: DiffusionModel, x_g: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
                    eps: torch.Tensor) -> torch.Tensor:
    """Denoising score matching of the fake score network on the generator's samples (detached: this step trains
    f_psi only): mean over pixels and batch of (eps_psi(x_t, t, c) - eps)^2."""
    from robustdistill.models.diffusion_sampling import denoising_loss

    return denoising_loss(fake, x_g.detach(), t, eps, labels=labels)


# ----------------------------------------------------------------------------------------------------------------
# The teacher


def ensure_diffusion_teacher(path: str, recipe: str | None, field: str = "teacher") -> Path:
    """``path``; a missing model is trained there first from ``recipe``."""
    target = Path(path)
    if (target / "model_index.json").is_file() or (target / "unet").is_dir():
        return target
    if not recipe:
        raise UserInputError(field, f"no diffusion model at {target}",
                             f"train one first (robustdistill train), or set {field}_recipe to a recipe that does")
    from robustdistill.trainers import train_from_recipe

    log.info("%s %s not found: training it from %s", field, target, recipe)
    return train_from_recipe(recipe, out=target)


def class_count(model: DiffusionModel) -> int:
    """The number of real classes (the null class of classifier-free guidance excluded)."""
    return int(model.num_classes or 0)


def check_diffusion_teacher(model: DiffusionModel, config: SiDConfig) -> None:
    """SiD here needs a multi-step, class-conditional, eps-predicting DDPM whose schedule holds t_min..t_max."""
    where = model.path
    if model.conditioning != "class" or not model.num_class_embeds:
        raise UserInputError("teacher", f"{where} is not a class-conditional DDPM (its UNet has conditioning "
                             f"{model.conditioning!r})", "point teacher at a ddpm trainer's output")
    if getattr(model, "one_step_t", None) is not None or model.provenance.get("one_step"):
        raise UserInputError("teacher", f"{where} is a one-step generator, not a DDPM",
                             "distil from the multi-step DDPM it came from")
    scheduler = model.scheduler
    prediction = getattr(scheduler.config, "prediction_type", None)
    if type(scheduler).__name__ != "DDPMScheduler" or prediction != "epsilon":
        raise UserInputError("teacher", f"{where} has a {type(scheduler).__name__} predicting {prediction!r}",
                             "SiD here needs a DDPMScheduler with epsilon prediction (the ddpm trainer's)")
    steps = int(scheduler.config.num_train_timesteps)
    for name in ("t_min", "t_init", "t_max"):
        if getattr(config, name) > steps - (name != "t_max"):
            raise UserInputError(name, f"{getattr(config, name)} is past the teacher's {steps} timesteps",
                                 "the defaults 38/440/712 are for a 1000-step DDPM; scale them to the teacher")


def frozen(model: DiffusionModel, trainable: bool) -> DiffusionModel:
    set_trainable(model.unet, trainable)
    return model


def copy_of(teacher: DiffusionModel) -> DiffusionModel:
    """A trainable copy of the teacher's UNet sharing its scheduler (generator and fake score start there)."""
    model = copy.copy(teacher)
    model.unet = copy.deepcopy(teacher.unet)
    model.provenance = dict(teacher.provenance)
    return frozen(model, True).eval()  # eval: a diffusers UNet has no dropout by default; keep it deterministic


# ----------------------------------------------------------------------------------------------------------------
# The trainer


@TRAINERS.register("sid")
class SiDTrainer(DiffusionTrainer):
    """Score identity Distillation of a class-conditional DDPM into a one-step generator."""

    config_class: ClassVar[type[SiDConfig]] = SiDConfig
    method: ClassVar[str] = "sid"
    output_format: ClassVar[str] = "robustdistill-one-step-generator"
    index_class: ClassVar[str] = "RobustDistillOneStepGenerator"
    config: SiDConfig

    # --- hooks (SFD overrides these) ------------------------------------------------------------------
    def check_inputs(self) -> None:
        cfg = self.config
        check_teacher(cfg.teacher, cfg.teacher_recipe, what="path/to/ddpm-directory")
        if not cfg.t_min < cfg.t_max:
            raise UserInputError("t_min", f"t_min {cfg.t_min} must be below t_max {cfg.t_max}",
                                 "the paper's 1000-step values are t_min = 38, t_max = 712")

    def conditions(self, batch: int, generator: torch.Generator) -> Conditions:
        """Classes drawn uniformly; the teacher and the fake score are asked about the class generated."""
        labels = torch.randint(0, self.num_classes, (batch,), generator=generator).to(self.device)
        return Conditions(labels, labels, labels)

    def terms(self, network: str, batch: int, generator: torch.Generator) -> list[tuple[float, Conditions]]:
        """The weighted loss terms of one update of ``network`` ("fake" or "generator"), each with its own
        conditions and noise: one term of weight 1 in SiD; SFD adds the forgotten class's term."""
        return [(1.0, self.conditions(batch, generator))]

    def extra_provenance(self) -> dict[str, Any]:
        return {}

    def start_generator(self, teacher: DiffusionModel) -> DiffusionModel:
        """The generator's starting point: a copy of the teacher (SFD's two-stage variant starts from a SiD
        generator instead)."""
        return copy_of(teacher)

    # --- pieces ---------------------------------------------------------------------------------------
    def load_teacher(self) -> DiffusionModel:
        path = ensure_diffusion_teacher(self.config.teacher, self.config.teacher_recipe)
        teacher = load_diffusion_model(path, device=self.device)
        check_diffusion_teacher(teacher, self.config)
        self.parents = [{"role": "teacher", "path": str(path), "sha256": checkpoint_sha256(path)}]
        self.num_classes = class_count(teacher)
        return frozen(teacher, False).eval()

    def noise(self, model: DiffusionModel, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(z, t, eps) for one network update, drawn on the CPU from the epoch's stream (device-independent)."""
        cfg = self.config
        shape = (batch, *model.sample_shape)
        z = torch.randn(shape, generator=generator)
        t = torch.randint(cfg.t_min, cfg.t_max, (batch,), generator=generator)
        eps = torch.randn(shape, generator=generator)
        return z.to(self.device), t.to(self.device), eps.to(self.device)

    def loss(self, network: str, networks: dict[str, DiffusionModel], generator: torch.Generator) -> torch.Tensor:
        """The weighted sum of :meth:`terms`' losses for one update of ``network``: the fake score's denoising loss
        on the generator's samples (detached), or the generator's SiD loss (with its gradient)."""
        cfg = self.config
        teacher, fake, student = networks["teacher"], networks["fake"], networks["generator"]
        total = torch.zeros((), device=self.device)
        for weight, conditions in self.terms(network, cfg.batch_size, generator):
            z, t, eps = self.noise(student, cfg.batch_size, generator)
            if network == "fake":
                with torch.no_grad():
                    x_g = one_step_generate(student, conditions.generator, z, cfg.t_init)
                total = total + weight * fake_score_loss(fake, x_g, conditions.fake, t, eps)
            else:
                x_g = one_step_generate(student, conditions.generator, z, cfg.t_init)
                total = total + weight * generator_loss(teacher, fake, x_g, conditions, t, eps, cfg.alpha)
        return total

    def step(self, networks: dict[str, DiffusionModel], optimizers: dict[str, torch.optim.Optimizer], ema: Any,
             generator: torch.Generator) -> tuple[float, float]:
        """One fake-score update, then one generator update; returns their losses."""
        fake, student = networks["fake"], networks["generator"]
        # 1. the fake score learns the score of the generator's current samples
        frozen(fake, True)
        fake_loss = self.loss("fake", networks, generator)
        self._update(fake_loss, fake, optimizers["fake"])
        # 2. the generator moves along the difference of the teacher's and the fake score's estimates (the fake
        # score frozen: the gradient flows through its input only)
        frozen(fake, False)
        gen_loss = self.loss("generator", networks, generator)
        self._update(gen_loss, student, optimizers["generator"])
        if ema is not None:
            ema.step(student.unet.parameters())
        return float(fake_loss.detach()), float(gen_loss.detach())

    def _update(self, loss: torch.Tensor, model: DiffusionModel, optimizer: torch.optim.Optimizer) -> None:
        optimiser_step(loss, list(model.unet.parameters()), optimizer, self.config.grad_clip)

    def make_optimizer(self, model: DiffusionModel, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.unet.parameters(), lr=lr, betas=tuple(self.config.adam_betas))

    # --- the run --------------------------------------------------------------------------------------
    def prepare(self) -> DiffusionModel:
        self.check_inputs()
        teacher = self.load_teacher()
        seed_everything(self.config.seed)  # training a missing teacher first must not change the student's init
        return teacher

    def run(self, out: Path, work: Path, resume: bool, teacher: DiffusionModel) -> Path:
        from diffusers.training_utils import EMAModel

        cfg = self.config
        networks = {"teacher": teacher, "fake": copy_of(teacher), "generator": self.start_generator(teacher)}
        optimizers = {"fake": self.make_optimizer(networks["fake"], cfg.fake_lr or cfg.lr),
                      "generator": self.make_optimizer(networks["generator"], cfg.lr)}
        ema = EMAModel(networks["generator"].unet.parameters(), decay=cfg.ema) if cfg.ema is not None else None
        state: dict[str, Any] = {"epoch": 0, "history": [], "seconds": 0.0}
        if resume and (work / STATE_FILE).exists():
            state = self._load_state(work / STATE_FILE, networks, optimizers, ema)
            log.info("resuming %s from %s after epoch %d", self.method, work, state["epoch"])
        with WorkProgress(f"train {self.method}", total=cfg.epochs * cfg.steps_per_epoch, units=cfg.epochs,
                          done=state["epoch"] * cfg.steps_per_epoch, done_units=state["epoch"],
                          heartbeat_s=self.heartbeat_s, unit_name="epochs") as progress:
            for epoch in range(state["epoch"], cfg.epochs):
                generator = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
                started = time.perf_counter()
                fake_total = gen_total = 0.0
                with progress.unit(f"epoch {epoch + 1}/{cfg.epochs}", 0.0):
                    for done in range(1, cfg.steps_per_epoch + 1):
                        fake_loss, gen_loss = self.step(networks, optimizers, ema, generator)
                        fake_total, gen_total = fake_total + fake_loss, gen_total + gen_loss
                        progress.advance(1.0, f"epoch {epoch + 1}/{cfg.epochs} · fake {fake_total / done:.3f}"
                                              f" · generator {gen_total / done:.3g}")
                state["seconds"] += time.perf_counter() - started
                record = {"epoch": epoch + 1, "step": (epoch + 1) * cfg.steps_per_epoch,
                          "fake_score_loss": fake_total / cfg.steps_per_epoch,
                          "generator_loss": gen_total / cfg.steps_per_epoch}
                state["history"].append(record)
                state["epoch"] = epoch + 1
                self._save_state(work / STATE_FILE, state, networks, optimizers, ema)
                log.info("%s epoch %d/%d fake_score_loss=%.4f generator_loss=%.4g", self.method, epoch + 1, cfg.epochs,
                         record["fake_score_loss"], record["generator_loss"])
        student = networks["generator"]
        if ema is not None:
            ema.copy_to(student.unet.parameters())
        return self.save(out, student.unet, student.scheduler, self.provenance(student, state))

    @staticmethod
    def _parts(networks: dict[str, DiffusionModel], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """What a saved state holds, by name: the two trained networks and their optimisers."""
        return {"generator": networks["generator"].unet, "fake": networks["fake"].unet,
                **{f"optimizer_{name}": optimizer for name, optimizer in optimizers.items()}}

    def _save_state(self, path: Path, state: dict[str, Any], networks: dict[str, DiffusionModel],
                    optimizers: dict[str, torch.optim.Optimizer], ema: Any) -> None:
        self.save_state(path, {**state, **{name: part.state_dict() for name, part in self._parts(networks, optimizers).items()},
                               "ema": ema.state_dict() if ema is not None else None})

    def _load_state(self, path: Path, networks: dict[str, DiffusionModel], optimizers: dict[str, torch.optim.Optimizer],
                    ema: Any) -> dict[str, Any]:
        return self.restore(path, self._parts(networks, optimizers), ema)

    def provenance(self, teacher: DiffusionModel, state: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return {
            **self.common_provenance(),
            # Data-free: no image was trained on, so there are no train_members of its own (a membership audit
            # of the generator uses the teacher's, from the teacher's robustdistill.json).
            "data": None,
            "train_members": [],
            "conditioning": {"classes": self.num_classes,
                             "null_class": (teacher.provenance.get("conditioning") or {}).get("null_class")},
            "one_step": {"t_init": cfg.t_init},
            "selection": {"metric": "last", "best_epoch": state["epoch"]},
            "history": state["history"],
            "seconds": round(state["seconds"], 3),
            **self.extra_provenance(),
        }
