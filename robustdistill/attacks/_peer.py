"""Running a torchattacks component inside our harness: lazy import, our seed, our model mode, no side effects.

torchattacks' FAB and Square are faithful copies of the official AutoAttack code (fra31/auto-attack), but its
``Attack.__call__`` forces ``model.eval()``, and its ``perturb`` methods reseed the global torch RNG (from
``time.time()`` when no seed is given). We call ``perturb`` directly (the model stays in the mode our base class
set), inside :func:`torch.random.fork_rng` with a seed drawn from our generator (deterministic for our seed, and
the caller's global RNG state is left as it was), with the model's parameters frozen so that backward passes do
not write ``.grad`` into the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn

from robustdistill.errors import UserInputError


def import_torchattacks() -> ModuleType:
    try:
        import torchattacks
    except ImportError:
        raise UserInputError(
            "attack", "needs torchattacks (its FAB and Square components), which is not installed",
            "pip install --no-deps torchattacks==3.5.1 (or `make`), or pip install 'robustdistill[attacks-peer]'",
        ) from None
    return torchattacks


def draw_seed(generator: torch.Generator) -> int:
    """A seed for a component that seeds the global RNG itself, drawn from (and advancing) our generator."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


@contextlib.contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Fork the global RNG (CPU and every CUDA device) and freeze the model's parameters for the duration."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=devices):
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)


def num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes, read from the model's output."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])
