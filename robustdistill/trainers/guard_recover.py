"""GUARD / SRe2L stage 2, recover: synthesising images from noise by BatchNorm statistics matching plus cross-entropy.

Here live the recover stage's settings (``[recover]`` in a recipe, :class:`RecoverSettings`), the BatchNorm layers it
matches (:func:`batchnorm_layers`), the forward hooks that measure the distance between a batch's feature statistics
and a layer's running statistics, :func:`bn_matching_loss`, and :func:`recover` itself, which returns the synthetic
images as :class:`Recovered` ([0, 1] pixels, class-major, with the BatchNorm-matching losses before and after).
"""

from __future__ import annotations

import math
from dataclasses import dataclass as plain_dataclass

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn
from tqdm.auto import tqdm

from robustdistill.errors import UserInputError
from robustdistill.models import Classifier
from robustdistill.trainers.base import derived_seed
from robustdistill.trainers.config import STRICT


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


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose running statistics the recover stage matches, in registration order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


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
