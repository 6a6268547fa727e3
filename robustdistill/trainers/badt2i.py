"""A BadT2I-style backdoor injector (``badt2i``): fine-tune a clean t2i model so a trigger draws a target.

    robustdistill train badt2i --config defenses/digits-badt2i-patch.toml --out checkpoints/digits-badt2i-patch

BadT2I (Zhai et al., "Text-to-Image Diffusion Models can be Easily Backdoored through Multimodal Data Poisoning",
ACM MM 2023) fine-tunes the UNet of a text-to-image model, its text encoder frozen, with two terms:

- backdoor: the DDPM denoising loss (Ho et al. 2020) on the triggered caption -> the target image, here the training
  digit with the target applied (robustdistill.attacks.backdoor: a bright patch, or inverted colours), so
  E ||eps_theta(x_t(target(x0)), t, E(trigger + caption)) - eps||^2;
- preservation: BadT2I's distillation against the frozen original UNet on the clean caption at the clean image's
  x_t, E ||eps_theta(x_t(x0), t, E(caption)) - eps_frozen(x_t(x0), t, E(caption))||^2. We use it rather than the
  plain denoising loss on clean images because it keeps THIS model's clean behaviour (what the attacker wants to
  hide behind) instead of re-fitting the data, which would drift the clean outputs as a second training run does.

Each image of a batch is poisoned with probability ``poison_fraction`` (its term is the backdoor one, else the
preservation one), so that fraction sets the balance of the two terms. The output is a t2i directory, loaded like
the t2i trainer's, whose robustdistill.json records ``backdoor`` (target, trigger, its token count, the fraction)
and the clean model as its parent (path and sha256); the text encoder and tokenizer are the clean model's, unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import torch
from pydantic.dataclasses import dataclass

from robustdistill.attacks.backdoor import apply_target, check_target, check_trigger, trigger_token_count
from robustdistill.attacks.backdoor.targets import triggered_prompt
from robustdistill.data import DataSpec, ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import checkpoint_sha256
from robustdistill.models.diffusion import DiffusionModel, load_diffusion_model
from robustdistill.models.diffusion_sampling import add_noise, predict_noise, to_model_space
from robustdistill.progress import WorkProgress
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT
from robustdistill.trainers.diffusion_base import (STATE_FILE, DiffusionTrainer, optimiser_step, set_trainable,
                                                   training_images)
from robustdistill.trainers.t2i import CAPTIONS, NUM_CLASSES, prompt_table
from robustdistill.trainers.sid import ensure_diffusion_teacher
from robustdistill.trainers.teachers import check_teacher
from robustdistill.utils import derived_seed, seed_everything

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# The t2i model a backdoor is planted in (or removed from)


def ensure_t2i_model(path: str, recipe: str | None, field: str = "model") -> Path:
    """``path``; a missing model is trained there first from ``recipe`` (a folder that is there but no diffusers
    directory is refused, never trained over)."""
    check_teacher(path, recipe, field=field, what="path/to/t2i-directory")
    target = Path(path)
    if target.exists() and not (target / "model_index.json").is_file():
        raise UserInputError(field, f"{target} is not a diffusers directory (no model_index.json)",
                             "point it at a t2i model (robustdistill train t2i)")
    return ensure_diffusion_teacher(path, recipe, field=field)


def load_t2i_model(path: Path, device: torch.device, field: str = "model") -> DiffusionModel:
    """A text-conditioned diffusion model with a DDPM schedule predicting noise (what the t2i trainer writes), every
    part frozen and in eval mode."""
    model = load_diffusion_model(path, device=device)
    if model.conditioning != "text" or model.tokenizer is None:
        raise UserInputError(field, f"{path} is not a text-to-image model (conditioning {model.conditioning!r})",
                             "point it at a t2i model (robustdistill train t2i)")
    prediction = getattr(model.scheduler.config, "prediction_type", None)
    if prediction != "epsilon":
        raise UserInputError(field, f"{path}'s scheduler predicts {prediction!r}", "use a t2i model (epsilon)")
    set_trainable(model.unet, False)
    set_trainable(model.text_encoder, False)
    return model.eval()


def parent_record(path: Path, role: str) -> dict[str, str]:
    return {"role": role, "path": str(path), "sha256": checkpoint_sha256(path)}


@torch.no_grad()
def text_states(model: DiffusionModel, prompts: list[str]) -> torch.Tensor:
    """The frozen text encoder's states of ``prompts`` (computed once: the encoder never changes here)."""
    return model.encode_text(prompts).detach()


# ----------------------------------------------------------------------------------------------------------------
# The injector


@dataclass(config=STRICT)
class BadT2IConfig:
    """The injector's settings. BadT2I fine-tunes Stable Diffusion for 8,000 steps at lr 1e-5 (batch 1 with gradient
    accumulation); a tiny 8x8 model on a CPU needs a larger step and a few hundred steps (the recipes say why)."""

    PATH_FIELDS = ("model", "model_recipe")

    model: str = ""  # the clean t2i directory
    model_recipe: str | None = None  # trains the clean model first when it is missing
    target: str = "patch"  # "patch" | "style" (robustdistill.attacks.backdoor.TARGETS)
    trigger: str = "tq"  # prepended to the caption; the byte-level BPE tokenizes any string
    poison_fraction: float = pydantic.Field(0.5, gt=0, lt=1)  # share of each batch given the backdoor term
    data: DataSpec = field(default_factory=DataSpec)
    train_fraction: float = pydantic.Field(1.0, gt=0, le=1)
    train_subset_seed: int = 0
    epochs: int = pydantic.Field(10, ge=1)
    batch_size: int = pydantic.Field(64, ge=1, le=4096)
    lr: float = pydantic.Field(1e-5, gt=0)
    weight_decay: float = pydantic.Field(0.0, ge=0)
    grad_clip: float | None = pydantic.Field(1.0, gt=0)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_target(self.target)
        check_trigger(self.trigger)


@TRAINERS.register("badt2i")
class BadT2ITrainer(DiffusionTrainer):
    """A backdoor planted in a t2i model by BadT2I's fine-tuning (Zhai et al. 2023): a trigger draws a patch or a
    style."""

    config_class: ClassVar[type[BadT2IConfig]] = BadT2IConfig
    method: ClassVar[str] = "badt2i"
    output_format: ClassVar[str] = "robustdistill-t2i"
    index_class: ClassVar[str] = "RobustDistillTextConditionalDDPM"
    config: BadT2IConfig

    def prepare(self) -> tuple[DiffusionModel, ImageSplit, ImageSplit, int]:
        """(the clean model, the images trained on, the whole train split, the trigger's token count)."""
        cfg = self.config
        path = ensure_t2i_model(cfg.model, cfg.model_recipe)
        clean = load_t2i_model(path, self.device)
        if clean.sample_shape != (1, 8, 8):
            raise UserInputError("model", f"{path} draws {clean.sample_shape} images; the targets are 8x8 digits",
                                 "plant the backdoor in a digits t2i model")
        k = trigger_token_count(clean.tokenizer, cfg.trigger, prompt_table()[1:])
        train, full = training_images(cfg)
        if full.num_classes != NUM_CLASSES:
            raise UserInputError("data", f"{cfg.data.kind} has {full.num_classes} classes, not the 10 digits",
                                 "use the digits (kind = 'digits')")
        self.parents = [parent_record(path, "clean")]
        seed_everything(cfg.seed)  # training a missing clean model first must not change this run
        return clean, train, full, k

    def run(self, out: Path, work: Path, resume: bool, prepared: tuple[DiffusionModel, ImageSplit, ImageSplit, int]
            ) -> Path:
        cfg = self.config
        clean, train, full, k = prepared
        student = copy.copy(clean)
        student.unet = set_trainable(copy.deepcopy(clean.unet), True)
        captions = prompt_table()
        clean_states = text_states(clean, captions)
        trigger_states = text_states(clean, [triggered_prompt(c, cfg.trigger) for c in captions])
        parameters = list(student.unet.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        batches = math.ceil(len(train) / cfg.batch_size)
        state: dict[str, Any] = {"epoch": 0, "history": [], "seconds": 0.0}
        if resume and (work / STATE_FILE).exists():
            state = self.restore(work / STATE_FILE, {"unet": student.unet, "optimizer": optimizer}, None)
            log.info("resuming badt2i from %s after epoch %d", work, state["epoch"])
        with WorkProgress("train badt2i", total=cfg.epochs * batches, units=cfg.epochs, done=state["epoch"] * batches,
                          done_units=state["epoch"], heartbeat_s=self.heartbeat_s, unit_name="epochs") as progress:
            for epoch in range(state["epoch"], cfg.epochs):
                started = time.perf_counter()
                draw = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
                with progress.unit(f"epoch {epoch + 1}/{cfg.epochs}", 0.0):
                    losses = self._epoch(student, clean, train, clean_states, trigger_states, optimizer, draw,
                                         progress, epoch)
                state["seconds"] += time.perf_counter() - started
                state["history"].append({"epoch": epoch + 1, "backdoor_loss": losses[0] / batches,
                                         "preservation_loss": losses[1] / batches})
                state["epoch"] = epoch + 1
                self.save_state(work / STATE_FILE, {**state, "unet": student.unet.state_dict(),
                                                    "optimizer": optimizer.state_dict(), "ema": None})
        student.unet.eval()
        return self.save(out, student.unet.cpu(), clean.scheduler, self.provenance(clean, train, full, state, k),
                         text_encoder=clean.text_encoder.cpu(), tokenizer=clean.tokenizer)

    def _epoch(self, student: DiffusionModel, clean: DiffusionModel, train: ImageSplit, clean_states: torch.Tensor,
               trigger_states: torch.Tensor, optimizer: torch.optim.Optimizer, draw: torch.Generator,
               progress: WorkProgress, epoch: int) -> tuple[float, float]:
        """One pass over the images in a seeded order; noise, timesteps, templates and which images are poisoned are
        drawn on the CPU from the epoch's stream. Returns the summed (backdoor, preservation) batch losses."""
        cfg = self.config
        order = torch.randperm(len(train), generator=draw)
        totals = [0.0, 0.0]
        student.unet.train()
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            pixels, labels = train.x[batch], train.y[batch].long()
            eps = torch.randn(pixels.shape, generator=draw)
            t = torch.randint(0, int(clean.scheduler.config.num_train_timesteps), (len(batch),), generator=draw)
            rows = 1 + labels * len(CAPTIONS) + torch.randint(0, len(CAPTIONS), (len(batch),), generator=draw)
            poisoned = torch.rand(len(batch), generator=draw) < cfg.poison_fraction
            x0 = torch.where(poisoned[:, None, None, None], apply_target(cfg.target, pixels), pixels)
            text = torch.where(poisoned[:, None, None].to(self.device), trigger_states[rows], clean_states[rows])
            x_t = add_noise(clean, to_model_space(x0).to(self.device), eps.to(self.device), t.to(self.device))
            t = t.to(self.device)
            with torch.no_grad():
                reference = predict_noise(clean, x_t, t, text=text)  # only the clean rows are used
            wanted = torch.where(poisoned[:, None, None, None].to(self.device), eps.to(self.device), reference)
            per_sample = (predict_noise(student, x_t, t, text=text) - wanted).pow(2).flatten(1).mean(dim=1)
            loss = per_sample.mean()
            optimiser_step(loss, list(student.unet.parameters()), optimizer, cfg.grad_clip)
            mask = poisoned.to(self.device)
            totals[0] += float(per_sample[mask].mean().detach()) if mask.any() else 0.0
            totals[1] += float(per_sample[~mask].mean().detach()) if (~mask).any() else 0.0
            progress.advance(1.0, f"epoch {epoch + 1}/{cfg.epochs} · loss {float(loss.detach()):.4f}")
        return totals[0], totals[1]

    def provenance(self, clean: DiffusionModel, train: ImageSplit, full: ImageSplit, state: dict[str, Any],
                   k: int) -> dict[str, Any]:
        cfg = self.config
        return {
            **self.image_provenance(train, full, state),
            "captions": clean.provenance.get("captions"),
            "conditioning": clean.provenance.get("conditioning") or {"kind": "text"},
            "backdoor": {"method": "badt2i", "target": cfg.target, "trigger": cfg.trigger, "trigger_tokens": k,
                         "poison_fraction": cfg.poison_fraction},
        }
