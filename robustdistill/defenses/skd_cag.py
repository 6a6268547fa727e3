"""SKD-CAG (``skd-cag``): remove a text-to-image backdoor by self-knowledge distillation with cross-attention guidance.

    robustdistill train skd-cag --config defenses/digits-skd-cag-patch.toml --out checkpoints/digits-skd-cag-patch

"Sealing the Backdoor: Unlearning Adversarial Text Triggers in Diffusion Models Using Knowledge Distillation"
(arXiv 2508.18235). The backdoored model teaches itself to ignore its trigger:

- teacher: a frozen copy of the BACKDOORED UNet, fed the CLEAN prompt; student: the backdoored UNet, trained, fed the
  TRIGGERED prompt (the trigger prepended). Both see the same x_t and t ~ U{0..T-1}. The text encoder is frozen.
- L_KD = MSE(eps_student(x_t, t, E(trigger + p)), eps_teacher(x_t, t, E(p))): with the trigger, do what you do
  without it.
- L_attn (cross-attention guidance): per text token, the cross-attention maps of every attn2 layer (heads averaged,
  resized, summed over layers, min-max normalised; robustdistill.defenses.cross_attention). The trigger tokens' maps
  are pushed toward a target (``attention_target``: zeros, or uniform noise); every other token's map is matched to
  the teacher's map of the same token of the clean prompt (position i + k against i, k the trigger's token count,
  the start token against the start token). L_attn = MSE(trigger maps, target) + MSE(other maps, teacher's).
- L = attention_weight L_attn + kd_weight L_KD, 0.5 / 0.5 as in the paper.

The official code converts the maps to NumPy (``.detach().numpy()``), so its L_attn is a constant that trains
nothing. Here the maps keep their gradient (a recording attention processor); ``detach_attention = true``
reproduces the official code's defect, for comparison only.

Data-free, as in the paper: x_t is Gaussian noise (the paper's random latents), the prompts are the t2i captions
(robustdistill.trainers.t2i.prompt_table). The trigger comes from the backdoored model's robustdistill.json
(``backdoor.trigger``, written by the badt2i trainer) unless the recipe gives one. The output is a t2i directory
whose robustdistill.json records ``defense`` (method skd-cag and its settings), a copy of ``backdoor`` (so an audit
knows the trigger and the target) and the backdoored model as its parent.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
import torch
from pydantic.dataclasses import dataclass

from robustdistill.attacks.backdoor import check_trigger, trigger_token_count, triggered_prompt
from robustdistill.defenses.cross_attention import (AttentionRecorder, record_cross_attention, restore_processors,
                                                    token_maps)
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import DiffusionModel
from robustdistill.models.diffusion_sampling import predict_noise
from robustdistill.progress import WorkProgress
from robustdistill.trainers.badt2i import ensure_t2i_model, load_t2i_model, parent_record, text_states
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT
from robustdistill.trainers.diffusion_base import STATE_FILE, DiffusionTrainer, optimiser_step, set_trainable
from robustdistill.trainers.t2i import prompt_table
from robustdistill.utils import derived_seed, seed_everything

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Losses


def kd_loss(eps_student: torch.Tensor, eps_teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the student's noise prediction (triggered prompt) and the teacher's (clean prompt)."""
    return torch.nn.functional.mse_loss(eps_student, eps_teacher.detach())


def attention_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor, k: int,
                   target: torch.Tensor) -> torch.Tensor:
    """SKD-CAG's attention term from per-token maps (batch, tokens, h, w) of the triggered (student) and the clean
    (teacher) prompt, the trigger being tokens 1..k of the student's: MSE(trigger maps, ``target``) + MSE(the student's
    other tokens, shifted back by k, against the teacher's). The teacher's tokens past tokens - k have no counterpart
    (the triggered prompt was cut there) and are left out."""
    tokens = student_maps.shape[1]
    if not 1 <= k < tokens - 1:
        raise ValueError(f"a trigger of {k} tokens does not fit {tokens} positions")
    kept = [0, *range(1 + k, tokens)]  # the student's start token and the prompt after the trigger
    matched = [0, *range(1, tokens - k)]  # the same tokens of the clean prompt
    trigger = student_maps[:, 1:1 + k]
    return (torch.nn.functional.mse_loss(trigger, target)
            + torch.nn.functional.mse_loss(student_maps[:, kept], teacher_maps[:, matched].detach()))


def noise_and_maps(model: DiffusionModel, recorder: AttentionRecorder, x_t: torch.Tensor, t: torch.Tensor,
                   text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_hat, per-token cross-attention maps) of one forward pass of a model whose attn2 layers record."""
    recorder.clear()
    eps = predict_noise(model, x_t, t, text=text)
    maps = token_maps(recorder.maps)
    recorder.clear()
    return eps, maps


# ----------------------------------------------------------------------------------------------------------------
# The defence


@dataclass(config=STRICT)
class SKDCAGConfig:
    """SKD-CAG's settings. Defaults are the paper's (AdamW lr 1e-6, weight decay 0.01, EMA 0.9999, every UNet
    parameter trained, 0.5 / 0.5); a tiny digits model on a CPU needs a larger step (the recipes say why)."""

    PATH_FIELDS = ("model", "model_recipe")

    model: str = ""  # the backdoored t2i directory (the badt2i trainer's output)
    model_recipe: str | None = None  # trains it first when it is missing
    trigger: str | None = None  # None: the model's robustdistill.json backdoor.trigger
    attention_target: Literal["zeros", "noise"] = "zeros"  # what the trigger tokens' maps are pushed toward
    attention_weight: float = pydantic.Field(0.5, ge=0)
    kd_weight: float = pydantic.Field(0.5, ge=0)
    # True reproduces the official code's defect (maps detached: the attention loss sends no gradient); comparison only
    detach_attention: bool = False
    train: Literal["all", "cross-attention"] = "all"  # every UNet parameter, or the attn2 layers only
    epochs: int = pydantic.Field(10, ge=1)  # a block of steps: one history record and one resumable state each
    steps_per_epoch: int = pydantic.Field(100, ge=1)
    batch_size: int = pydantic.Field(16, ge=1, le=4096)  # prompts (drawn from the caption table) per step
    lr: float = pydantic.Field(1e-6, gt=0)
    weight_decay: float = pydantic.Field(0.01, ge=0)
    ema: float | None = pydantic.Field(0.9999, ge=0, lt=1)  # EMA decay of the saved weights; None: the raw weights
    grad_clip: float | None = pydantic.Field(1.0, gt=0)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.trigger is not None:
            check_trigger(self.trigger)
        if self.kd_weight == 0 and (self.attention_weight == 0 or self.detach_attention):
            why = ("both loss weights are 0" if self.attention_weight == 0
                   else "kd_weight is 0 and the detached attention loss has no gradient")
            raise UserInputError("kd_weight", f"{why}: nothing would be trained",
                                 "use the paper's attention_weight = 0.5, kd_weight = 0.5")


def trainable_parameters(unet: Any, which: str) -> list[torch.nn.Parameter]:
    """Every UNet parameter, or those of the cross-attention (attn2) layers; the rest is frozen."""
    set_trainable(unet, which == "all")
    if which == "cross-attention":
        for name, parameter in unet.named_parameters():
            if ".attn2." in name:
                parameter.requires_grad_(True)
    return [p for p in unet.parameters() if p.requires_grad]


@TRAINERS.register("skd-cag")
class SKDCAGTrainer(DiffusionTrainer):
    """Backdoor removal from a t2i model by self-knowledge distillation with cross-attention guidance (SKD-CAG,
    arXiv 2508.18235)."""

    config_class: ClassVar[type[SKDCAGConfig]] = SKDCAGConfig
    method: ClassVar[str] = "skd-cag"
    output_format: ClassVar[str] = "robustdistill-t2i"
    index_class: ClassVar[str] = "RobustDistillTextConditionalDDPM"
    config: SKDCAGConfig

    def prepare(self) -> tuple[DiffusionModel, str, int]:
        """(the backdoored model, the trigger, its token count)."""
        cfg = self.config
        path = ensure_t2i_model(cfg.model, cfg.model_recipe)
        model = load_t2i_model(path, self.device)
        backdoor = model.provenance.get("backdoor") or {}
        trigger = cfg.trigger or backdoor.get("trigger")
        if not trigger:
            raise UserInputError("trigger", f"{path} records no backdoor trigger (it is not a badt2i model)",
                                 "give the trigger to remove: --set trigger=...")
        check_trigger(trigger, "trigger" if cfg.trigger else f"{path}/robustdistill.json: backdoor.trigger")
        k = trigger_token_count(model.tokenizer, trigger, prompt_table()[1:])
        if 1 + k >= model.tokenizer.model_max_length - 1:
            raise UserInputError("trigger", f"{trigger!r} takes {k} of the {model.tokenizer.model_max_length} "
                                 "token positions", "use a shorter trigger")
        self.parents = [parent_record(path, "backdoored")]
        seed_everything(cfg.seed)
        return model, trigger, k

    def run(self, out: Path, work: Path, resume: bool, prepared: tuple[DiffusionModel, str, int]) -> Path:
        from diffusers.training_utils import EMAModel

        cfg = self.config
        teacher, trigger, k = prepared
        student = copy.copy(teacher)
        student.unet = copy.deepcopy(teacher.unet)
        parameters = trainable_parameters(student.unet, cfg.train)
        recorders = {"teacher": AttentionRecorder(detach=True), "student": AttentionRecorder(cfg.detach_attention)}
        previous = record_cross_attention(teacher.unet, recorders["teacher"])
        record_cross_attention(student.unet, recorders["student"])
        captions = prompt_table()[1:]
        clean = text_states(teacher, captions)
        triggered = text_states(teacher, [triggered_prompt(c, trigger) for c in captions])
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ema = EMAModel(parameters, decay=cfg.ema) if cfg.ema is not None else None
        state: dict[str, Any] = {"epoch": 0, "history": [], "seconds": 0.0}
        if resume and (work / STATE_FILE).exists():
            state = self.restore(work / STATE_FILE, {"unet": student.unet, "optimizer": optimizer}, ema)
            log.info("resuming skd-cag from %s after epoch %d", work, state["epoch"])
        with WorkProgress("train skd-cag", total=cfg.epochs * cfg.steps_per_epoch, units=cfg.epochs,
                          done=state["epoch"] * cfg.steps_per_epoch, done_units=state["epoch"],
                          heartbeat_s=self.heartbeat_s, unit_name="epochs") as progress:
            for epoch in range(state["epoch"], cfg.epochs):
                draw = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
                started = time.perf_counter()
                totals = [0.0, 0.0]
                student.unet.train()
                with progress.unit(f"epoch {epoch + 1}/{cfg.epochs}", 0.0):
                    for done in range(1, cfg.steps_per_epoch + 1):
                        losses = self.step(teacher, student, recorders, clean, triggered, k, draw)
                        loss = cfg.kd_weight * losses[0] + cfg.attention_weight * losses[1]
                        optimiser_step(loss, parameters, optimizer, cfg.grad_clip, ema=ema)
                        totals = [totals[0] + float(losses[0].detach()), totals[1] + float(losses[1].detach())]
                        progress.advance(1.0, f"epoch {epoch + 1}/{cfg.epochs} · kd {totals[0] / done:.4f}"
                                              f" · attention {totals[1] / done:.4f}")
                state["seconds"] += time.perf_counter() - started
                state["history"].append({"epoch": epoch + 1, "step": (epoch + 1) * cfg.steps_per_epoch,
                                         "kd_loss": totals[0] / cfg.steps_per_epoch,
                                         "attention_loss": totals[1] / cfg.steps_per_epoch})
                state["epoch"] = epoch + 1
                self.save_state(work / STATE_FILE, {**state, "unet": student.unet.state_dict(),
                                                    "optimizer": optimizer.state_dict(),
                                                    "ema": ema.state_dict() if ema is not None else None})
        if ema is not None:
            ema.copy_to(parameters)
        restore_processors(teacher.unet, previous)
        restore_processors(student.unet, previous)
        student.unet.eval()
        return self.save(out, student.unet.cpu(), teacher.scheduler, self.provenance(teacher, trigger, k, state),
                         text_encoder=teacher.text_encoder.cpu(), tokenizer=teacher.tokenizer)

    def step(self, teacher: DiffusionModel, student: DiffusionModel, recorders: dict[str, AttentionRecorder],
             clean: torch.Tensor, triggered: torch.Tensor, k: int,
             draw: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_KD, L_attn) of one batch: captions drawn from the table, x_t Gaussian noise, t uniform, all from the
        epoch's stream on the CPU."""
        cfg = self.config
        rows = torch.randint(0, len(clean), (cfg.batch_size,), generator=draw)
        x_t = torch.randn((cfg.batch_size, *teacher.sample_shape), generator=draw).to(self.device)
        t = torch.randint(0, int(teacher.scheduler.config.num_train_timesteps), (cfg.batch_size,),
                          generator=draw).to(self.device)
        with torch.no_grad():
            eps_teacher, maps_teacher = noise_and_maps(teacher, recorders["teacher"], x_t, t, clean[rows])
        eps_student, maps_student = noise_and_maps(student, recorders["student"], x_t, t, triggered[rows])
        target = torch.zeros_like(maps_student[:, 1:1 + k])
        if cfg.attention_target == "noise":
            target = torch.rand(target.shape, generator=draw).to(self.device)
        return kd_loss(eps_student, eps_teacher), attention_loss(maps_student, maps_teacher, k, target)

    def provenance(self, model: DiffusionModel, trigger: str, k: int, state: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        backdoor = dict(model.provenance.get("backdoor") or {"trigger": trigger, "target": None})
        return {
            **self.common_provenance(),
            # Data-free: no image was trained on (a membership audit uses the backdoored model's own members).
            "data": None,
            "train_members": [],
            "captions": model.provenance.get("captions"),
            "conditioning": model.provenance.get("conditioning") or {"kind": "text"},
            "backdoor": backdoor,
            "defense": {"method": "skd-cag", "trigger": trigger, "trigger_tokens": k,
                        "attention_target": cfg.attention_target, "attention_weight": cfg.attention_weight,
                        "kd_weight": cfg.kd_weight, "train": cfg.train, "detach_attention": cfg.detach_attention},
            "selection": {"metric": "last", "best_epoch": state["epoch"]},
            "history": state["history"],
            "seconds": round(state["seconds"], 3),
        }
