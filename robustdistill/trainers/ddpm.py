"""A class-conditional DDPM (``ddpm``): the diffusion teacher on the built-in digits.

    robustdistill train ddpm --config defenses/digits-ddpm.toml --out checkpoints/digits-ddpm

Ho et al. 2020's objective, E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, c)||^2 with t uniform
over the schedule, on diffusers' UNet2DModel with a class embedding and diffusers' DDPMScheduler (1000 linear-beta
steps by default, as in the paper); an EMA of the weights (diffusers' EMAModel) is what is saved. With
``cond_drop`` > 0 a fraction of the labels is replaced by a null class during training (Ho & Salimans 2022), so the
model can be sampled with classifier-free guidance; the null class is the last class embedding.

Images are scaled to [-1, 1]. ``train_fraction`` trains on a seeded class-balanced subset of the train split (a
smaller set is memorised more, and leaks more to membership inference); provenance records exactly which images
were trained on (``train_members``), as the image trainers do.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
import torch
from pydantic.dataclasses import dataclass

from robustdistill.data import DataSpec, ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import DiffusionModel
from robustdistill.models.diffusion_sampling import denoising_loss, to_model_space
from robustdistill.progress import WorkProgress
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT
from robustdistill.trainers.diffusion_base import STATE_FILE, DiffusionTrainer, optimiser_step, training_images
from robustdistill.utils import derived_seed, seed_everything

log = logging.getLogger(__name__)


@dataclass(config=STRICT)
class DDPMConfig:
    """The DDPM's settings. Defaults: the paper's schedule and loss, a UNet sized for 8x8 digits on a CPU."""

    data: DataSpec = field(default_factory=DataSpec)
    train_fraction: float = pydantic.Field(1.0, gt=0, le=1)  # a seeded, class-balanced subset of the train split
    train_subset_seed: int = 0
    epochs: int = pydantic.Field(100, ge=1)
    batch_size: int = pydantic.Field(64, ge=1, le=4096)
    lr: float = pydantic.Field(2e-3, gt=0)
    warmup_steps: int = pydantic.Field(100, ge=0)  # linear warm-up, then cosine decay to 0 (diffusers' schedule)
    grad_clip: float | None = pydantic.Field(1.0, gt=0)
    ema: float | None = pydantic.Field(0.995, ge=0, lt=1)  # EMA decay of the saved weights; None: the raw weights
    cond_drop: float = pydantic.Field(0.1, ge=0, lt=1)  # fraction of labels replaced by the null class; 0: no null
    timesteps: int = pydantic.Field(1000, ge=10, le=4000)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "linear"
    channels: tuple[int, ...] = (32, 64)  # UNet block widths (each a multiple of 8: GroupNorm with 8 groups)
    layers_per_block: int = pydantic.Field(1, ge=1, le=4)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 1 <= len(self.channels) <= 4 or any(c < 8 or c % 8 or c > 1024 for c in self.channels):
            raise UserInputError("channels", f"{list(self.channels)} are not 1 to 4 widths, each a multiple of 8 up "
                                 "to 1024", "use e.g. [32, 64]")


def build_unet(config: DDPMConfig, shape: tuple[int, int, int], num_classes: int) -> Any:
    """A class-conditional UNet2DModel for images of ``shape``; one class embedding more when a null class is
    trained."""
    from diffusers import UNet2DModel

    channels, height, width = shape
    depth = len(config.channels)
    if height % 2 ** (depth - 1) or width % 2 ** (depth - 1):
        raise UserInputError("channels", f"{depth} UNet levels halve {height}x{width} images {depth - 1} times",
                             "use fewer levels for such small images")
    return UNet2DModel(
        sample_size=(height, width), in_channels=channels, out_channels=channels,
        layers_per_block=config.layers_per_block, block_out_channels=tuple(config.channels),
        down_block_types=("DownBlock2D",) * depth, up_block_types=("UpBlock2D",) * depth, norm_num_groups=8,
        num_class_embeds=num_classes + (1 if config.cond_drop > 0 else 0),
    )


def build_scheduler(config: DDPMConfig) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.timesteps, beta_schedule=config.beta_schedule,
                         beta_start=1e-4, beta_end=0.02, prediction_type="epsilon", clip_sample=True)


@TRAINERS.register("ddpm")
class DDPMTrainer(DiffusionTrainer):
    """A class-conditional DDPM on an image dataset (the built-in digits by default)."""

    config_class: ClassVar[type[DDPMConfig]] = DDPMConfig
    method: ClassVar[str] = "ddpm"
    output_format: ClassVar[str] = "robustdistill-ddpm"
    index_class: ClassVar[str] = "RobustDistillClassConditionalDDPM"
    config: DDPMConfig

    def prepare(self) -> tuple[ImageSplit, ImageSplit]:
        """(the images trained on, the whole train split)."""
        return training_images(self.config)

    def run(self, out: Path, work: Path, resume: bool, prepared: tuple[ImageSplit, ImageSplit]) -> Path:
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        cfg = self.config
        train, full = prepared
        seed_everything(cfg.seed)
        unet = build_unet(cfg, train.input_shape, full.num_classes).to(self.device)
        model = DiffusionModel(unet=unet, scheduler=build_scheduler(cfg), conditioning="class")
        batches = math.ceil(len(train) / cfg.batch_size)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
        schedule = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, batches * cfg.epochs),
                                                   batches * cfg.epochs)
        ema = EMAModel(unet.parameters(), decay=cfg.ema) if cfg.ema is not None else None
        state: dict[str, Any] = {"epoch": 0, "history": [], "seconds": 0.0}
        if resume and (work / STATE_FILE).exists():
            state = self.restore(work / STATE_FILE, {"unet": unet, "optimizer": optimizer, "schedule": schedule}, ema)
            log.info("resuming ddpm from %s after epoch %d", work, state["epoch"])
        x_all = to_model_space(train.x)
        with WorkProgress("train ddpm", total=cfg.epochs * batches, units=cfg.epochs, done=state["epoch"] * batches,
                          done_units=state["epoch"], heartbeat_s=self.heartbeat_s, unit_name="epochs") as progress:
            for epoch in range(state["epoch"], cfg.epochs):
                started = time.perf_counter()
                draw = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
                with progress.unit(f"epoch {epoch + 1}/{cfg.epochs}", 0.0):
                    total = self._epoch(model, x_all, train.y, optimizer, schedule, ema, draw, progress, epoch)
                state["seconds"] += time.perf_counter() - started
                state["history"].append({"epoch": epoch + 1, "train_loss": total / batches,
                                         "lr": optimizer.param_groups[0]["lr"]})
                state["epoch"] = epoch + 1
                self.save_state(work / STATE_FILE, {**state, "unet": unet.state_dict(),
                                                    "optimizer": optimizer.state_dict(),
                                                    "schedule": schedule.state_dict(),
                                                    "ema": ema.state_dict() if ema is not None else None})
        if ema is not None:
            ema.copy_to(unet.parameters())
        unet.eval()
        return self.save(out, unet.cpu(), model.scheduler, self.provenance(train, full, state))

    def _epoch(self, model: DiffusionModel, x_all: torch.Tensor, y_all: torch.Tensor, optimizer: torch.optim.Optimizer,
               schedule: Any, ema: Any, draw: torch.Generator, progress: WorkProgress, epoch: int) -> float:
        """One pass over the training images in a seeded order; the noise, timesteps and dropped labels are drawn
        on the CPU from the epoch's stream (the same on every device). Returns the summed batch losses."""
        cfg = self.config
        order = torch.randperm(len(x_all), generator=draw)
        null_class = model.unet.config.num_class_embeds - 1
        params = list(model.unet.parameters())
        total = 0.0
        model.unet.train()
        for done, start in enumerate(range(0, len(order), cfg.batch_size), start=1):
            batch = order[start:start + cfg.batch_size]
            x0, labels = x_all[batch], y_all[batch].clone()
            eps = torch.randn(x0.shape, generator=draw)
            t = torch.randint(0, cfg.timesteps, (len(batch),), generator=draw)
            if cfg.cond_drop > 0:
                labels[torch.rand(len(batch), generator=draw) < cfg.cond_drop] = null_class
            loss = denoising_loss(model, x0.to(self.device), t.to(self.device), eps.to(self.device),
                                  labels=labels.to(self.device))
            optimiser_step(loss, params, optimizer, cfg.grad_clip, schedule, ema)
            total += float(loss.detach())
            progress.advance(1.0, f"epoch {epoch + 1}/{cfg.epochs} · loss {total / done:.4f}")
        return total

    def provenance(self, train: ImageSplit, full: ImageSplit, state: dict[str, Any]) -> dict[str, Any]:
        null_class = full.num_classes if self.config.cond_drop > 0 else None
        return {**self.image_provenance(train, full, state),
                "conditioning": {"classes": full.num_classes, "null_class": null_class}}
