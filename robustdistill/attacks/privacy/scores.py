"""Per-point membership scores from a classifier's logits, and the query views LiRA averages over.

All scores are computed from logits in float64 so that confident predictions do not saturate:

- loss (Yeom et al. 2018): minus the cross-entropy of the true label;
- confidence (Salem et al. 2019): the largest softmax probability (needs no label);
- the LiRA score (Carlini et al. 2022, section IV.B): phi = log p_y - log sum_{y' != y} p_y', computed as
  z_y - logsumexp_{y' != y} z_y' (the softmax normaliser cancels), which is the logit of p_y without ever forming
  1 - p_y and is approximately Gaussian across shadow models.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robustdistill.utils import model_device

Query = Literal["auto", "none", "flip", "shift", "flip-shift"]
QUERIES: tuple[str, ...] = ("auto", "none", "flip", "shift", "flip-shift")
SHIFTS: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 0), (-1, 0))


def queries_for_augment(augment: str | None) -> str:
    """The query views matching a recipe's training augmentation (LiRA queries the augmentations the model saw)."""
    return {"crop-flip": "flip-shift", "shift": "shift"}.get(augment or "none", "none")


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x translated by (dy, dx) pixels with zero fill, as the training augmentation pads with zeros."""
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def query_views(x: torch.Tensor, queries: str) -> list[torch.Tensor]:
    """The inputs each point is queried with: the image itself first, then its flip and/or one-pixel shifts."""
    if queries not in QUERIES or queries == "auto":
        raise ValueError(f"unresolved query set {queries!r}")
    bases = [x, x.flip(-1)] if "flip" in queries else [x]
    views = list(bases)
    if "shift" in queries:
        views += [shifted(base, dy, dx) for base in bases for dy, dx in SHIFTS]
    return views


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, queries: str = "none", batch_size: int = 512) -> torch.Tensor:
    """(views, N, classes) float64 logits of ``model`` on every query view of x (eval mode, model's device)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    for view in query_views(x, queries):
        pieces = [model(view[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(view), batch_size)]
        out.append(torch.cat(pieces))
    model.train(was_training)
    return torch.stack(out)


def lira_score(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """phi = z_y - logsumexp_{y' != y} z_y' over the last axis (logits (..., N, C), labels (N,))."""
    logits = logits.double()
    index = y.view(*([1] * (logits.ndim - 2)), -1, 1).expand(*logits.shape[:-1], 1)
    true = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


def loss_score(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of the true label (higher = lower loss = more member-like)."""
    logits = logits.double()
    index = y.view(*([1] * (logits.ndim - 2)), -1, 1).expand(*logits.shape[:-1], 1)
    return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def confidence_score(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability."""
    return torch.softmax(logits.double(), dim=-1).amax(dim=-1)
