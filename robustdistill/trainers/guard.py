"""GUARD and SRe2L: dataset distillation by squeeze, recover and relabel, then a student trained on the result.

SRe2L: Yin, Xing and Shen, "Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From A New
Perspective", NeurIPS 2023. GUARD: Xue et al., "Towards Adversarially Robust Dataset Distillation by Curvature
Regularization", AAAI 2025 (arXiv 2403.10045). GUARD is SRe2L with a curvature regulariser added to the squeeze
stage only (:mod:`robustdistill.trainers.curvature`); recover, relabel and the student are unchanged.

1. squeeze: train a model WITH BatchNorm on the real data (cross-entropy, plus the curvature regulariser for GUARD,
   computed in eval mode so the perturbed inputs never enter the BatchNorm running statistics, as in the official
   code). ``squeeze_checkpoint`` reuses an existing squeezed model instead.
2. recover: synthesise ``ipc`` images per class from Gaussian noise by optimising them so that the squeezed model
   classifies them as their class (cross-entropy) while the mean and variance of every BatchNorm layer's input over
   a batch of synthetic images match that layer's running statistics
   (r_bn * sum_l m_l * (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2), m = first_bn_multiplier for the first layer,
   1 after). One batch holds one image of each class (up to ``classes_per_batch`` classes), as in the official
   CIFAR code; the ``ipc`` batches are independent problems, optimised side by side. Adam lr 0.25, betas (0.5, 0.9),
   cosine decay, 1000 iterations, r_bn 0.01, a random roll of up to ``jitter`` pixels each iteration. The images are
   optimised in the network's normalised input space, as in the official code (so the papers' lr means the same),
   and clamped there to the image of [0, 1]: the saved images are [0, 1] pixels.
3. relabel: soft labels of the squeezed model at temperature 20.
4. student: a fresh model trained on the synthetic images with KL(softmax(t/T) || softmax(s/T)) (batchmean, no T^2
   factor, as in the official code), where t are the squeezed model's logits for the very (augmented, mixed) batch
   the student sees - the official CIFAR relabel step. Without augmentation and mixup these are exactly the stored
   soft labels. The student is selected on the REAL validation split (never on the test split).

Outputs of ``robustdistill train guard --config RECIPE --out OUT``::

    OUT/                        the student checkpoint; provenance["distilled"] names the distilled dataset
    OUT.distilled/
        squeezed/               the squeezed model (a checkpoint; absent when squeeze_checkpoint names one)
        dataset/                the distilled dataset, a DatasetDict written with save_to_disk: "train" = the
                                synthetic images (image: float32 HxWxC in [0, 1], label: ClassLabel, soft_label:
                                the relabel probabilities), "validation"/"test" = the real data's val/test splits,
                                so ``[data] kind = "hf-disk", root = "OUT.distilled/dataset"`` trains on the
                                synthetic images and selects and evaluates on real ones
        grid.png                the synthetic images, one row per class
        distilled.json          what was distilled from what: fingerprints, settings, BatchNorm-matching losses

Every piece is written atomically. An interrupted run keeps what finished: ``--resume`` reuses a finished squeeze
and distilled dataset made with the same settings and continues the student from its last epoch.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass as plain_dataclass
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn
from tqdm.auto import tqdm

from robustdistill import ownership
from robustdistill.data import ImageSplit, clear_cache, load_split
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, checkpoint_sha256, load_model
from robustdistill.models.checkpoint import check_checkpoint_out
from robustdistill.trainers.base import TRAINERS, Trainer, TrainState, derived_seed
from robustdistill.trainers.config import STRICT, TrainConfig, config_to_dict
from robustdistill.trainers.curvature import curvature_penalty, simple_curvature_penalty
from robustdistill.utils import atomic_path, seed_everything, sha256_tensors, write_json_atomic

log = logging.getLogger(__name__)

Curvature = Literal["double-backprop", "simple", "none"]
CURVATURE_WEIGHTS = {"double-backprop": 100.0, "simple": 1e-4, "none": 0.0}  # GUARD's lambda (CIFAR) and beta
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["multistep", "cosine"]
MANIFEST = "distilled.json"
DISTILLED = "distilled"  # the marker kind of <out>.distilled/


# --------------------------------------------------------------------------------------------------------------
# Configs


@dataclass(config=STRICT)
class SqueezeSettings:
    """The squeeze model's training (``[squeeze]`` in a recipe). Defaults: GUARD's pretrain_cifar.py - ResNet-18,
    SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine over 200 epochs, batch 128, crop + flip, the last epoch
    kept. Data, normalisation, seed and device are the recipe's own."""

    arch: str = "resnet18-cifar"
    arch_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Schedule = "cosine"
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = Field(0.1, gt=0, le=1)
    augment: Literal["crop-flip", "shift", "none"] = "crop-flip"
    select_metric: Literal["clean", "robust", "mean", "last"] = "last"
    val_robust: bool = False


@dataclass(config=STRICT)
class RecoverSettings:
    """The recover stage (``[recover]`` in a recipe). Defaults: the official CIFAR recover (recover_cifar.py via
    run.sh): Adam lr 0.25, betas (0.5, 0.9), cosine decay without warm-up, 1000 iterations, r_bn 0.01, first BatchNorm
    layer weighted x10, a random roll of up to 4 pixels (32x32 images), no flip, batches of one image per class."""

    iterations: int = Field(1000, ge=1)
    lr: float = Field(0.25, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = Field(0.01, ge=0)
    first_bn_multiplier: float = Field(10.0, ge=0)
    jitter: int = Field(4, ge=0)  # pixels of random roll (wrapping) per iteration, each direction
    flip: bool = False  # random horizontal flip per iteration (never for digits: a flip changes the class)
    classes_per_batch: int = Field(100, ge=1)  # classes (one image each) whose BatchNorm statistics are matched together
    parallel: int = Field(50, ge=1)  # batches optimised side by side (independent; only speed and memory change)


@dataclass(config=STRICT)
class GuardConfig(TrainConfig):
    """GUARD: SRe2L with the curvature regulariser in the squeeze stage. The top-level training fields are the
    student's; ``[squeeze]`` and ``[recover]`` configure those stages.

    Student defaults: the official CIFAR relabel/train step (relabel_cifar.py) - AdamW lr 0.001, weight decay 0.01,
    cosine over 400 epochs, batch 128, crop + flip, mixup 0.8, the last epoch kept. Temperature 20 (the papers'
    relabel temperature; the CIFAR script hard-codes 30). Curvature: double backprop with lambda 100 and h 3 (the
    CIFAR version, at the official code's scale: the gradient of the batch-MEAN loss change, so lambda holds for the
    squeeze batch size, 128 there; see :mod:`robustdistill.trainers.curvature`); ``simple`` is the large-data version
    with beta 1e-4. ``curvature_h`` and the weight act in the network's normalised input space, as in the official code.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("squeeze_checkpoint",)

    ipc: int = 10
    temperature: float = Field(20.0, gt=0)
    mixup_alpha: float = Field(0.8, ge=0)
    curvature: Curvature = "double-backprop"
    curvature_weight: float | None = Field(None, ge=0)  # None: 100 (double-backprop) or 1e-4 (simple)
    curvature_h: float = Field(3.0, gt=0)
    squeeze_checkpoint: str = ""  # reuse this squeezed model (a BatchNorm checkpoint) instead of training one
    squeeze: SqueezeSettings = field(default_factory=SqueezeSettings)
    recover: RecoverSettings = field(default_factory=RecoverSettings)
    # Student training (fields shared with every trainer, with the official defaults of the relabel step).
    epochs: int = Field(400, ge=1)
    optimizer: Optimizer = "adamw"  # type: ignore[assignment]
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    lr_schedule: Schedule = "cosine"
    lr_milestones: list[int] = field(default_factory=list)
    select_metric: Literal["clean", "robust", "mean", "last"] = "last"
    val_robust: bool = False

    @property
    def curvature_strength(self) -> float:
        return CURVATURE_WEIGHTS[self.curvature] if self.curvature_weight is None else self.curvature_weight


@dataclass(config=STRICT)
class SRe2LConfig(GuardConfig):
    """SRe2L: the same pipeline without the curvature regulariser (``curvature = "none"``)."""

    curvature: Curvature = "none"


@dataclass(config=STRICT)
class SqueezeConfig(TrainConfig):
    """The squeeze stage as a trainer config (built from a GuardConfig; recorded in the squeezed checkpoint)."""

    optimizer: Optimizer = "sgd"  # type: ignore[assignment]
    lr_schedule: Schedule = "cosine"
    curvature: Curvature = "none"
    curvature_weight: float = Field(0.0, ge=0)
    curvature_h: float = Field(3.0, gt=0)


def squeeze_config(cfg: GuardConfig) -> SqueezeConfig:
    s = cfg.squeeze
    return SqueezeConfig(
        data=cfg.data, train_fraction=cfg.train_fraction, train_subset_seed=cfg.train_subset_seed,
        arch=s.arch, arch_params=dict(s.arch_params), mean=cfg.mean, std=cfg.std, epochs=s.epochs,
        batch_size=s.batch_size, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
        lr_schedule=s.lr_schedule, lr_milestones=list(s.lr_milestones), lr_gamma=s.lr_gamma, augment=s.augment,
        seed=cfg.seed, device=cfg.device, threat_model=cfg.threat_model, norm=cfg.norm, eps=cfg.eps,
        attack_steps=cfg.attack_steps, attack_step_size=cfg.attack_step_size, select_metric=s.select_metric,
        val_robust=s.val_robust, val_attack_steps=cfg.val_attack_steps, curvature=cfg.curvature,
        curvature_weight=cfg.curvature_strength, curvature_h=cfg.curvature_h,
    )


def make_optimizer(
    params: Any, optimizer: str, lr: float, momentum: float, weight_decay: float, schedule: str,
    milestones: list[int], gamma: float, epochs: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD / Adam / AdamW with a step or cosine schedule (stepped once per epoch, as the official scripts do)."""
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)


# --------------------------------------------------------------------------------------------------------------
# Squeeze


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose running statistics the recover stage matches, in registration order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class SqueezeTrainer(Trainer):
    """The squeeze stage: cross-entropy on the real data, plus GUARD's curvature regulariser unless it is "none"."""

    config_class = SqueezeConfig
    method = "squeeze"

    def __init__(self, config: SqueezeConfig) -> None:
        super().__init__(config)
        self._penalty_sum, self._penalty_n = 0.0, 0

    def make_optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        c = self.config
        return make_optimizer(model.parameters(), c.optimizer, c.lr, c.momentum, c.weight_decay, c.lr_schedule,
                              c.lr_milestones, c.lr_gamma, c.epochs)

    def batch_loss(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        cfg = self.config
        if cfg.curvature == "none" or cfg.curvature_weight == 0:
            return loss, logits
        # Eval mode (BatchNorm uses, and does not update, its running statistics) and the network's normalised
        # input space: both as in the official pretrain_cifar.py, whose inputs are already normalised.
        model.eval()
        network = model.network

        def per_point(u: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(network(u), y, reduction="none")

        u = model.normalize(x).detach()
        penalty_fn = curvature_penalty if cfg.curvature == "double-backprop" else simple_curvature_penalty
        penalty = penalty_fn(per_point, u, h=cfg.curvature_h, weight=cfg.curvature_weight)
        model.train()
        self._penalty_sum += float(penalty.detach()) * len(y)
        self._penalty_n += len(y)
        return loss + penalty, logits

    def train_epoch(self, model: Classifier, optimizer: torch.optim.Optimizer, train: ImageSplit, epoch: int) -> dict[str, float]:
        self._penalty_sum, self._penalty_n = 0.0, 0
        record = super().train_epoch(model, optimizer, train, epoch)
        if self._penalty_n:
            record["curvature_penalty"] = self._penalty_sum / self._penalty_n
        return record


# --------------------------------------------------------------------------------------------------------------
# Recover


class _BNStatistics:
    """Forward hooks on every BatchNorm layer: per group of ``group_size`` consecutive images, the distance between
    the batch mean / variance of the layer's input and the layer's running mean / variance (SRe2L's R_bn terms)."""

    def __init__(self, network: nn.Module, group_size: int) -> None:
        self.layers = batchnorm_layers(network)
        self.group_size = group_size
        self.losses: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        n, channels = x.shape[0], x.shape[1]
        groups = x.reshape(n // self.group_size, self.group_size, channels, -1).transpose(1, 2)
        groups = groups.reshape(n // self.group_size, channels, -1)
        mean = groups.mean(dim=2)
        var = groups.var(dim=2, unbiased=False)
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        distance = (var - module.running_var).norm(dim=1) + (mean - module.running_mean).norm(dim=1)
        self.losses.append(distance)  # (groups,)

    def take(self) -> torch.Tensor:
        """(layers, groups) for the last forward pass."""
        losses, self.losses = self.losses, []
        return torch.stack(losses)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _normalisation(model: Classifier, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(model.mean if model.mean is not None else [0.0] * channels, device=device).view(1, -1, 1, 1)
    std = torch.tensor(model.std if model.std is not None else [1.0] * channels, device=device).view(1, -1, 1, 1)
    return mean, std


def bn_matching_loss(model: Classifier, images: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per BatchNorm layer, the mean over groups of ``group_size`` consecutive images of
    ||mu(x) - running_mean||_2 + ||var(x) - running_var||_2 (no layer weights): how far the images' feature
    statistics are from the squeezed model's. ``images`` are [0, 1] pixels."""
    if len(images) % group_size:
        raise UserInputError("images", f"{len(images)} images do not split into groups of {group_size}", "pass whole groups")
    was_training = model.training
    model.eval()
    hooks = _BNStatistics(model.network, group_size)
    try:
        with torch.no_grad():
            model(images)
        return hooks.take().mean(dim=1)
    finally:
        hooks.close()
        model.train(was_training)


@plain_dataclass
class Recovered:
    images: torch.Tensor  # (classes * ipc, C, H, W) in [0, 1], class-major: class 0's ipc images first
    labels: torch.Tensor  # (classes * ipc,)
    bn_initial: list[float]  # per BatchNorm layer, mean over batches, at initialisation
    bn_final: list[float]  # the same for the recovered images
    squeezed_accuracy: float  # the squeezed model's accuracy on the recovered images


def recover(model: Classifier, ipc: int, settings: RecoverSettings | None = None, *, seed: int = 0,
            progress: bool | None = None) -> Recovered:
    """SRe2L's recover stage: ``ipc`` images per class synthesised from noise against the squeezed ``model``.

    Batch ``b`` of class chunk ``k`` holds one image of each class in the chunk; every batch is its own problem
    (its own BatchNorm statistics, its own Adam state), so optimising ``parallel`` batches side by side gives what
    optimising them one after another would. The same seed gives the same images on the same machine.
    """
    settings = settings or RecoverSettings()
    if ipc < 1:
        raise UserInputError("ipc", f"{ipc} images per class is nothing to distil", "use ipc >= 1, e.g. 10 or 50")
    layers = batchnorm_layers(model.network)
    if not layers:
        raise UserInputError("squeeze.arch", f"the squeezed model ({model.arch}) has no BatchNorm layers, and the "
                             "recover stage matches BatchNorm statistics", "squeeze with a BatchNorm architecture, "
                             "e.g. cnn-bn (digits) or resnet18-cifar")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    channels, height, width = model.input_shape
    mean, std = _normalisation(model, channels, device)
    low, high = (0 - mean) / std, (1 - mean) / std
    classes = model.num_classes
    chunks = [list(range(start, min(start + settings.classes_per_batch, classes)))
              for start in range(0, classes, settings.classes_per_batch)]
    runs = [(k, start, min(settings.parallel, ipc - start)) for k in range(len(chunks))
            for start in range(0, ipc, settings.parallel)]
    multipliers = torch.tensor([settings.first_bn_multiplier] + [1.0] * (len(layers) - 1), device=device)
    result = torch.empty(classes, ipc, channels, height, width)
    bn_initial = torch.zeros(len(layers))
    bn_final = torch.zeros(len(layers))
    correct = 0
    bar = tqdm(total=len(runs) * settings.iterations, desc=f"recover {ipc} per class", unit="it", leave=False,
               disable=None if progress is None else not progress)
    try:
        for k, start, batches in runs:
            chunk = chunks[k]
            size = len(chunk)
            targets = torch.tensor(chunk, device=device).repeat(batches)  # batch-major: [c0..cK, c0..cK, ...]
            # Each batch's starting noise has its own stream, and every batch sees the same jitter sequence, so the
            # images do not depend on how many batches run side by side.
            noise = torch.cat([torch.randn(size, channels, height, width,
                                           generator=torch.Generator().manual_seed(derived_seed(seed, "init", k, b)))
                               for b in range(start, start + batches)]).to(device)
            generator = torch.Generator().manual_seed(derived_seed(seed, "jitter", k))
            inputs = torch.max(torch.min(noise, high), low).requires_grad_(True)
            before = bn_matching_loss(model, inputs.detach() * std + mean, size)
            optimizer = torch.optim.Adam([inputs], lr=settings.lr, betas=settings.betas, eps=1e-8)
            hooks = _BNStatistics(model.network, size)
            try:
                for iteration in range(settings.iterations):
                    for group in optimizer.param_groups:  # cosine decay, no warm-up (lr_cosine_policy(lr, 0, T))
                        group["lr"] = 0.5 * (1 + math.cos(math.pi * iteration / settings.iterations)) * settings.lr
                    jittered = inputs
                    if settings.jitter:
                        dy, dx = (int(v) for v in torch.randint(-settings.jitter, settings.jitter + 1, (2,), generator=generator))
                        jittered = torch.roll(jittered, shifts=(dy, dx), dims=(2, 3))
                    if settings.flip and bool(torch.rand(1, generator=generator) < 0.5):
                        jittered = jittered.flip(3)
                    optimizer.zero_grad(set_to_none=True)
                    logits = model.network(jittered)
                    ce = nn.functional.cross_entropy(logits, targets, reduction="none").view(batches, size).mean(1)
                    bn = (hooks.take() * multipliers[:, None]).sum(0)
                    # A sum over independent batches: each batch gets exactly the gradient it would get alone.
                    loss = (ce + settings.r_bn * bn).sum()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        inputs.copy_(torch.max(torch.min(inputs, high), low))
                    bar.update(1)
            finally:
                hooks.close()
            images = (inputs.detach() * std + mean).clamp(0, 1)
            after = bn_matching_loss(model, images, size)
            bn_initial += before.cpu() * batches
            bn_final += after.cpu() * batches
            with torch.no_grad():
                correct += int((model(images).argmax(1) == targets).sum())
            images = images.view(batches, size, channels, height, width).cpu()
            result[chunk[0] : chunk[-1] + 1, start : start + batches] = images.transpose(0, 1)
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
        model.train(was_training)
    total_batches = ipc * len(chunks)
    labels = torch.arange(classes).repeat_interleave(ipc)
    return Recovered(result.reshape(classes * ipc, channels, height, width), labels,
                     (bn_initial / total_batches).tolist(), (bn_final / total_batches).tolist(), correct / (classes * ipc))


# --------------------------------------------------------------------------------------------------------------
# Relabel and the distilled dataset


@torch.no_grad()
def relabel(model: Classifier, images: torch.Tensor, temperature: float = 20.0, batch_size: int = 512) -> torch.Tensor:
    """Soft labels: softmax(model(x) / T) of the squeezed model in eval mode (SRe2L's relabel, T = 20)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        parts = [torch.softmax(model(images[i : i + batch_size].to(device)) / temperature, dim=1).cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def distilled_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the synthetic images (float32) and their labels: the distilled dataset's identity."""
    return sha256_tensors(images.to(torch.float32), labels.to(torch.int64))


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) [0, 1] floats -> (N, H, W, C) uint8 when they are exact 8-bit levels (real CIFAR-10), else float32."""
    array = x.permute(0, 2, 3, 1).contiguous().numpy()
    scaled = array * 255.0
    if np.allclose(scaled, np.round(scaled), atol=1e-4, rtol=0):
        return np.round(scaled).astype(np.uint8)
    return array.astype(np.float32)


def _is_distilled_dataset(path: Path) -> bool:
    """An existing folder the dataset may replace: empty, or one whose every file the marker of ``<out>.distilled``
    lists (robustdistill wrote them all; a user's file among them keeps the folder)."""
    if path.is_dir() and not any(path.iterdir()):
        return True
    files = ownership.files_under(path) if path.is_dir() else []
    return bool(files) and all(ownership.owns(path.parent, path / name) for name in files)


def _is_legacy_distilled(root: Path) -> bool:
    """A ``<out>.distilled`` folder of an earlier version (no marker): only what a GUARD / SRe2L run writes there."""
    known = {"distilled.json", "grid.png", "dataset", "squeezed", "squeezed.partial"}
    entries = list(root.iterdir())
    return (all(e.name in known or ownership.is_tmp_leftover(e.name) for e in entries)
            and (root / "dataset" / "dataset_dict.json").is_file())


def save_distilled_dataset(out: str | Path, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor,
                           classes: tuple[str, ...], val: ImageSplit | None = None,
                           test: ImageSplit | None = None) -> Path:
    """Write the distilled dataset with ``save_to_disk``, atomically: "train" = the synthetic images (image,
    label, soft_label), plus the real "validation" and "test" splits when given. Reads back with
    ``load_split({"kind": "hf-disk", "root": out}, "train")``."""
    from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
    from datasets import utils as datasets_utils

    from robustdistill.models.checkpoint import atomic_directory

    out = Path(out)
    _, channels, height, width = images.shape

    def split(x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> Dataset:
        array = _hwc(x) if soft is None else x.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)
        columns: dict[str, Any] = {"image": array, "label": y.numpy().astype(np.int64)}
        features = {"image": Array3D(shape=(height, width, channels), dtype=str(array.dtype)),
                    "label": ClassLabel(names=list(classes))}
        if soft is not None:
            columns["soft_label"] = soft.numpy().astype(np.float32)
            features["soft_label"] = Sequence(Value("float32"), length=len(classes))
        return Dataset.from_dict(columns, features=Features(features))

    parts = {"train": split(images, labels, soft_labels)}
    if val is not None:
        parts["validation"] = split(val.x, val.y, None)
    if test is not None:
        parts["test"] = split(test.x, test.y, None)
    quiet = datasets_utils.are_progress_bars_disabled()
    datasets_utils.disable_progress_bars()  # a bar per split for a few hundred rows is noise
    try:
        with atomic_directory(out, may_replace=_is_distilled_dataset) as tmp:
            DatasetDict(parts).save_to_disk(str(tmp))
    finally:
        if not quiet:
            datasets_utils.enable_progress_bars()
    clear_cache()  # a dataset rewritten at the same path must not be served from the in-process cache
    return out


def save_grid(images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], out: str | Path,
              max_columns: int = 50) -> Path:
    """A PNG of the synthetic images: one row per class (its name on the left), up to ``max_columns`` per row."""
    from PIL import Image, ImageDraw

    out = Path(out)
    _, channels, height, width = images.shape
    scale = max(1, 32 // max(height, width))
    cell_h, cell_w, pad, margin = height * scale, width * scale, 2, 28
    columns = min(max_columns, max(int((labels == c).sum()) for c in range(len(classes))))
    canvas = Image.new("RGB", (margin + columns * (cell_w + pad) + pad, len(classes) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(classes):
        top = pad + row * (cell_h + pad)
        draw.text((2, top + cell_h // 2 - 5), str(name)[:4], fill="black")
        members = images[labels == row][:columns]
        for col, image in enumerate(members):
            pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).convert("RGB")
            tile = tile.resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + pad + col * (cell_w + pad), top))
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def distilled_paths(out: str | Path) -> dict[str, Path]:
    """Where a run with student checkpoint ``out`` writes the distilled data and the squeezed model."""
    root = Path(out).with_name(Path(out).name + ".distilled")
    return {"root": root, "squeezed": root / "squeezed", "dataset": root / "dataset", "grid": root / "grid.png",
            "manifest": root / MANIFEST}


# --------------------------------------------------------------------------------------------------------------
# The pipeline


@TRAINERS.register("guard")
class GuardTrainer(Trainer):
    """GUARD (Xue et al. AAAI 2025): SRe2L dataset distillation with a curvature-regularised squeeze, then a student."""

    config_class: ClassVar[type[TrainConfig]] = GuardConfig
    method = "guard"
    config: GuardConfig

    def __init__(self, config: GuardConfig) -> None:
        super().__init__(config)
        if config.ipc < 1:
            raise UserInputError("ipc", f"{config.ipc} images per class is nothing to distil",
                                 "use ipc >= 1, e.g. 10 or 50 as in the papers")
        if self.method == "sre2l" and config.curvature != "none":
            raise UserInputError("curvature", "sre2l is the pipeline without the curvature regulariser",
                                 "run `robustdistill train guard` for a curvature-regularised squeeze, or set curvature = 'none'")
        self.squeezed: Classifier | None = None
        self.distilled: dict[str, Any] = {}
        self.dataset_spec: dict[str, Any] = {}
        self.real_train: ImageSplit | None = None

    # --- stages -------------------------------------------------------------------------------------------
    def check_squeeze_inputs(self, real: ImageSplit) -> None:
        """Fail before any training: the squeeze architecture (or checkpoint) must have BatchNorm layers."""
        cfg = self.config
        if cfg.squeeze_checkpoint:
            if not Path(cfg.squeeze_checkpoint).exists():
                raise UserInputError("squeeze_checkpoint", f"no checkpoint at {cfg.squeeze_checkpoint}",
                                     "fix the path, or leave it empty to squeeze with [squeeze]")
            return
        from robustdistill.models import build_network

        network = build_network(cfg.squeeze.arch, real.num_classes, real.input_shape[0],
                                min(real.input_shape[1:]), **cfg.squeeze.arch_params)
        if not batchnorm_layers(network):
            raise UserInputError("squeeze.arch", f"{cfg.squeeze.arch} has no BatchNorm layers, and the recover stage "
                                 "matches BatchNorm statistics", "use a BatchNorm architecture, e.g. cnn-bn (digits) "
                                 "or resnet18-cifar")

    def squeeze(self, paths: dict[str, Path], real: ImageSplit, resume: bool) -> tuple[Classifier, dict[str, Any]]:
        """Train (or reuse) the squeezed model; returns it and its record for provenance."""
        cfg = self.config
        if cfg.squeeze_checkpoint:
            return self._given_squeeze(Path(cfg.squeeze_checkpoint), real)
        squeeze_cfg = squeeze_config(cfg)
        wanted = _comparable(config_to_dict(squeeze_cfg))
        target = paths["squeezed"]
        done = resume and (target / "config.json").is_file() and _comparable(
            _recipe_config(target).get("config", {})) == wanted
        if done:
            log.info("reusing the squeezed model in %s", target)
        else:
            log.info("squeeze: %s on the real data, curvature %s", cfg.squeeze.arch, cfg.curvature)
            SqueezeTrainer(squeeze_cfg).fit(target, resume=resume)
        model = load_model(target, device=self.device)
        assert isinstance(model, Classifier)
        record = {"path": str(target), "sha256": checkpoint_sha256(target), "arch": model.arch,
                  "curvature": {"kind": cfg.curvature, "weight": cfg.curvature_strength if cfg.curvature != "none" else 0.0,
                                "h": cfg.curvature_h}}
        return model, record

    def _given_squeeze(self, path: Path, real: ImageSplit) -> tuple[Classifier, dict[str, Any]]:
        cfg = self.config
        try:
            model = load_model(path, device=self.device)
        except UserInputError as exc:
            raise UserInputError("squeeze_checkpoint", f"{path}: {exc.problem}", exc.fix) from None
        if not isinstance(model, Classifier):
            raise UserInputError("squeeze_checkpoint", f"{path} is not an image classifier", "point at a squeezed model")
        if not batchnorm_layers(model.network):
            raise UserInputError("squeeze_checkpoint", f"{path} ({model.arch}) has no BatchNorm layers, and the recover "
                                 "stage matches BatchNorm statistics", "squeeze with a BatchNorm architecture")
        if model.num_classes != real.num_classes or tuple(model.input_shape) != real.input_shape:
            raise UserInputError("squeeze_checkpoint", f"{path} takes {tuple(model.input_shape)} inputs with "
                                 f"{model.num_classes} classes, the data {real.input_shape} with {real.num_classes}",
                                 "use a model squeezed on this data")
        recipe = _recipe_config(path)
        if recipe.get("method") == SqueezeTrainer.method:
            used = recipe.get("config", {})
            curvature = {"kind": used.get("curvature", "none"), "weight": used.get("curvature_weight", 0.0),
                         "h": used.get("curvature_h", 3.0)}
        elif cfg.curvature == "none":  # any BatchNorm model trained without the regulariser is an SRe2L squeeze
            curvature = {"kind": "none", "weight": 0.0, "h": cfg.curvature_h}
        else:
            raise UserInputError("squeeze_checkpoint", f"{path} has no record of a curvature-regularised squeeze",
                                 "leave squeeze_checkpoint empty so this recipe squeezes it, or set curvature = 'none'")
        if curvature["kind"] != cfg.curvature:
            raise UserInputError("squeeze_checkpoint", f"{path} was squeezed with curvature {curvature['kind']!r}, this "
                                 f"recipe asks for {cfg.curvature!r}", "point at a matching squeeze, or change curvature")
        record = {"path": str(path), "sha256": checkpoint_sha256(path), "arch": model.arch, "curvature": curvature,
                  "given": True}
        return model, record

    def distil(self, paths: dict[str, Path], squeezed: Classifier, squeeze_record: dict[str, Any], real: ImageSplit,
               resume: bool) -> dict[str, Any]:
        """Recover + relabel (or reuse a finished distilled dataset made from the same inputs); write the dataset,
        the grid and the manifest. Returns the manifest."""
        cfg = self.config
        inputs = {"squeezed_sha256": squeeze_record["sha256"], "ipc": cfg.ipc, "temperature": cfg.temperature,
                  "recover": config_to_dict(cfg.recover), "seed": cfg.seed, "real_fingerprint": real.fingerprint}
        manifest_path = paths["manifest"]
        if resume and manifest_path.is_file() and paths["dataset"].is_dir():
            import json

            previous = json.loads(manifest_path.read_text())
            if previous.get("inputs") == inputs:
                log.info("reusing the distilled dataset in %s", paths["dataset"])
                return previous
        recovered = recover(squeezed, cfg.ipc, cfg.recover, seed=derived_seed(cfg.seed, "recover"))
        soft = relabel(squeezed, recovered.images, cfg.temperature)
        fingerprint = distilled_fingerprint(recovered.images, recovered.labels)
        val, test = load_split(cfg.data, "val"), load_split(cfg.data, "test")
        ownership.adopt(paths["root"], DISTILLED, legacy=_is_legacy_distilled)
        save_distilled_dataset(paths["dataset"], recovered.images, recovered.labels, soft, real.classes, val, test)
        ownership.record(paths["root"], [paths["dataset"] / name for name in ownership.files_under(paths["dataset"])])
        save_grid(recovered.images, recovered.labels, real.classes, paths["grid"])
        ownership.record(paths["root"], [paths["grid"]])
        manifest = {
            "method": self.method,
            "fingerprint": fingerprint,
            "images": len(recovered.labels),
            "ipc": cfg.ipc,
            "classes": list(real.classes),
            "input_shape": list(real.input_shape),
            "dataset": str(paths["dataset"]),
            "grid": str(paths["grid"]),
            "squeeze": squeeze_record,
            "curvature": squeeze_record["curvature"],
            "recover": {**config_to_dict(cfg.recover), "bn_loss_initial": recovered.bn_initial,
                        "bn_loss_final": recovered.bn_final, "squeezed_accuracy": recovered.squeezed_accuracy},
            "relabel": {"temperature": cfg.temperature},
            "real_data": {"spec": cfg.data.model_dump(mode="json"), "fingerprint": real.fingerprint,
                          "split": real.split, "n": len(real)},
            "seed": cfg.seed,
            "inputs": inputs,
        }
        write_json_atomic(manifest_path, manifest)  # written last: its presence marks a finished distillation
        ownership.record(paths["root"], [manifest_path])
        log.info("distilled %d images (%d per class) to %s; BatchNorm matching loss %.3g -> %.3g", len(recovered.labels),
                 cfg.ipc, paths["dataset"], sum(recovered.bn_initial), sum(recovered.bn_final))
        return manifest

    # --- the whole pipeline -----------------------------------------------------------------------------------
    def fit(self, out: str | Path, *, resume: bool = False, on_epoch_end: Any = None,
            train_data: ImageSplit | None = None) -> Path:
        """Squeeze, recover, relabel, then train the student on the distilled data; writes ``out`` (the student)
        and ``<out>.distilled/`` (see the module docstring)."""
        if train_data is not None:
            raise UserInputError("train_data", "GUARD / SRe2L train the student on the data they distil",
                                 "give the real data in the recipe's [data]")
        out = Path(out)
        paths = distilled_paths(out)
        # Before the squeeze: the student's checkpoint and <out>.distilled are new, empty or robustdistill's own.
        check_checkpoint_out(out)
        ownership.claim_out(paths["root"], DISTILLED, legacy=_is_legacy_distilled, what="<out>.distilled")
        for partial in (out.with_name(out.name + ".partial"), paths["squeezed"].with_name("squeezed.partial")):
            if partial.exists() and not resume:
                raise UserInputError("--resume", f"an interrupted run is kept in {partial}",
                                     f"add --resume to continue it, or delete {partial} to start over")
        cfg = self.config
        seed_everything(cfg.seed)
        real, _ = self.training_split()
        self.real_train = real
        self.check_squeeze_inputs(real)
        squeezed, squeeze_record = self.squeeze(paths, real, resume)
        squeezed.eval()
        self.squeezed = squeezed
        manifest = self.distil(paths, squeezed, squeeze_record, real, resume)
        self.distilled = manifest
        self.parents = [{"role": "squeezed", "path": squeeze_record["path"], "sha256": squeeze_record["sha256"]}]
        self.dataset_spec = {"kind": "hf-disk", "root": str(paths["dataset"])}
        synthetic = load_split(self.dataset_spec, "train")  # what was saved is what the student learns from
        if distilled_fingerprint(synthetic.x, synthetic.y) != manifest["fingerprint"]:
            raise UserInputError(str(paths["dataset"]), "does not hold the images its manifest names (changed on disk?)",
                                 f"delete {paths['root']} and run again")
        return super().fit(out, resume=resume, on_epoch_end=on_epoch_end, train_data=synthetic)

    # --- the student ------------------------------------------------------------------------------------------
    def make_optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        c = self.config
        return make_optimizer(model.parameters(), c.optimizer, c.lr, c.momentum, c.weight_decay, c.lr_schedule,
                              c.lr_milestones, c.lr_gamma, c.epochs)

    def batch_loss(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        assert self.squeezed is not None, "fit() loads the squeezed model first"
        if cfg.mixup_alpha > 0:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
            perm = torch.randperm(len(x), generator=generator).to(x.device)
            x = lam * x + (1 - lam) * x[perm]
        with torch.no_grad():
            teacher = self.squeezed(x)
        logits = model(x)
        loss = nn.functional.kl_div(torch.log_softmax(logits / cfg.temperature, dim=1),
                                    torch.log_softmax(teacher / cfg.temperature, dim=1),
                                    reduction="batchmean", log_target=True)
        return loss, logits

    def provenance(self, train: ImageSplit, state: TrainState, full: ImageSplit | None = None) -> dict[str, Any]:
        record = super().provenance(train, state, full)
        manifest = self.distilled
        record["data"] = {"spec": self.dataset_spec, "fingerprint": train.fingerprint, "split": "train",
                          "n_trained_on": len(train)}
        record["distilled"] = {
            "fingerprint": manifest["fingerprint"],
            "dataset": manifest["dataset"],
            "grid": manifest["grid"],
            "images": manifest["images"],
            "ipc": manifest["ipc"],
            "curvature": manifest["curvature"],
            "squeeze": manifest["squeeze"],
            "recover": manifest["recover"],
            "relabel": manifest["relabel"],
            "real_data": manifest["real_data"],
        }
        return record


@TRAINERS.register("sre2l")
class SRe2LTrainer(GuardTrainer):
    """SRe2L (Yin et al. NeurIPS 2023): squeeze, recover, relabel dataset distillation, then a student."""

    config_class = SRe2LConfig
    method = "sre2l"


def _recipe_config(checkpoint: Path) -> dict[str, Any]:
    import json

    try:
        provenance = json.loads((checkpoint / "config.json").read_text()).get("provenance") or {}
    except (OSError, ValueError):
        return {}
    recipe = provenance.get("recipe")
    return recipe if isinstance(recipe, dict) else {}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A squeeze config without the settings that do not change the model (device)."""
    config = copy.deepcopy(config)
    config.pop("device", None)
    return config


__all__ = ["GuardConfig", "GuardTrainer", "RecoverSettings", "Recovered", "SRe2LConfig", "SRe2LTrainer",
           "SqueezeConfig", "SqueezeSettings", "SqueezeTrainer", "batchnorm_layers", "bn_matching_loss",
           "distilled_fingerprint", "distilled_paths", "recover", "relabel", "save_distilled_dataset", "save_grid"]
