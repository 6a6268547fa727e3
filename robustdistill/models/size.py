"""Model size: parameter count and multiply-accumulates (MACs) of one forward pass.

    from robustdistill.models.size import count_macs, count_params
    count_params(model)                 # every parameter, shared ones once
    count_macs(model, (1, 8, 8))        # conv + linear MACs for ONE input of shape (C, H, W)

MACs are counted with forward hooks on ``nn.Conv1d/2d/3d`` and ``nn.Linear`` during one forward pass in eval mode
under ``torch.no_grad``: a convolution costs ``output elements x (in_channels / groups) x kernel elements``, a linear
layer ``output elements x in_features``. Bias additions, normalisation, activations, pooling and matrix products
outside these layers (attention) are not counted, the usual convention for CNN sizes (a layer called twice counts
twice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustdistill.errors import UserInputError

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(module: nn.Module) -> int:
    """The number of parameters of ``module`` (trainable or not; a parameter shared by several layers once)."""
    return sum(p.numel() for p in module.parameters())


def _layer_macs(layer: nn.Module, output: Any) -> int:
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(layer, CONV_LAYERS):
        fan_in = (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        return output.numel() * fan_in
    if isinstance(layer, nn.Linear):
        return output.numel() * layer.in_features
    return 0


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the conv and linear layers of ``module`` for ONE input of ``input_shape`` (without
    the batch dimension, e.g. ``(3, 32, 32)``). The input is zeros on the module's device and dtype; the module is
    run in eval mode and left in the mode it was in."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise UserInputError("input_shape", f"must be a sequence of sizes, got {input_shape!r}",
                             "e.g. (3, 32, 32): one input, without the batch dimension") from None
    if not shape or min(shape) < 1:
        raise UserInputError("input_shape", f"must be positive sizes, got {list(shape)}",
                             "e.g. (3, 32, 32): one input, without the batch dimension")
    reference = next(iter(module.parameters()), None)
    if reference is None:
        reference = next(iter(module.buffers()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    total = 0

    def hook(layer: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        total += _layer_macs(layer, output)

    modes = {m: m.training for m in module.modules()}
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (*CONV_LAYERS, nn.Linear))]
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *shape), device=device, dtype=dtype))
    except (RuntimeError, TypeError, ValueError) as exc:  # the user's model on the user's shape: a message
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError("input_shape", f"the model cannot run on one input of shape {list(shape)}: {message}",
                             "give the shape of one input the model takes, without the batch dimension") from None
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return total


__all__ = ["count_macs", "count_params"]
