"""Teacher checkpoints for distillation: load one, or train it first from its recipe when it is missing."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from robustdistill import reproducibility
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, load_model

log = logging.getLogger(__name__)


def check_teacher(path: str, recipe: str | None, field: str = "teacher", what: str = "path/to/checkpoint") -> None:
    """Fail fast, before anything is loaded or written, on a teacher that is not given, missing with no recipe to
    train it, or whose recipe file is missing."""
    if not path:
        raise UserInputError(field, "no teacher checkpoint given", f"set {field} = '{what}' in the recipe or --set {field}=PATH")
    if not Path(path).exists() and not recipe:
        raise UserInputError(field, f"no checkpoint at {path}",
                             f"train it first, fix the path, or set {field}_recipe to a recipe that trains it")
    if recipe and not Path(recipe).is_file():
        raise UserInputError(f"{field}_recipe", f"file not found: {recipe}", "check the path")


def ensure_teacher(path: str, recipe: str | None, field: str = "teacher") -> Path:
    """Return ``path``; if it does not exist and ``recipe`` is given, train the teacher there first."""
    target = Path(path)
    if (target / "config.json").exists() or target.is_file():
        return target
    if not recipe:
        raise UserInputError(field, f"no checkpoint at {target}", f"train one first, or set {field}_recipe to a recipe that trains it")
    from robustdistill.trainers import train_from_recipe

    log.info("teacher %s not found: training it from %s", target, recipe)
    return train_from_recipe(recipe, out=target)


def load_teacher(path: Path, field: str = "teacher") -> Classifier:
    model = load_model(path)
    if not isinstance(model, Classifier):
        raise UserInputError(field, f"{path} is not an image classifier checkpoint", "point at a robustdistill classifier checkpoint")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _graph_for_inference(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model traced, frozen and optimised for inference (constants folded, convolution weights pre-packed for
    oneDNN), or None when it cannot be traced or its outputs differ from the eager model's."""
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.compile, which needs a C++ toolchain and compiles for tens of
            # seconds per input shape: far more than the whole digits training it would speed up. The pinned torch
            # still ships torch.jit, and any failure falls back to the eager model.
            warnings.simplefilter("ignore")
            with torch.no_grad():
                graph = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
                for batch in (example, example[:1]):  # the last batch of an epoch is smaller
                    expected, got = model(batch), graph(batch)
                    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
                        raise ValueError(f"outputs differ by {(got - expected).abs().max():.2e}")
    except Exception as error:  # noqa: BLE001 - any tracing failure means "use the eager model"
        log.info("teacher forward stays eager: %s", error)
        return None
    return graph


def inference_forward(model: nn.Module, example: torch.Tensor, trace: bool | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward pass of a FROZEN teacher for loss terms that never need its gradient; returns ordinary tensors.

    On CPU the teacher is traced and optimised for inference, which halves its forward time on the digits CNNs
    (3.1 -> 1.5 ms per batch of 64 on one thread): the teacher passes are most of what MTARD adds to adversarial
    training. Elsewhere, in reproducible mode, and whenever tracing fails, it is the eager model under inference
    mode. Outputs agree with the eager model's to 1e-4 (checked on ``example`` before use), not bit for bit, so the
    two give different students. ``trace`` forces the choice (None: as above). The model must be in eval mode and
    stay frozen.
    """
    if model.training:
        raise ValueError("inference_forward needs the teacher in eval mode")
    # Pinned runs keep the eager model: its kernels are those shown to reproduce across CPUs, where the traced
    # graph's (oneDNN-layout convolutions, pre-transposed matrix products) were the one path that did not.
    if trace is None:
        trace = example.device.type == "cpu" and not reproducibility.is_pinned()
    graph = _graph_for_inference(model, example) if trace else None
    forward = graph if graph is not None else model

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = forward(x)
        return out.clone()  # an inference tensor cannot be saved for backward; a clone outside the mode can

    return run
