"""FGSM: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.

Threat model: L-inf, one signed-gradient step of size eps on the cross-entropy of the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from robustdistill.attacks.base import ATTACKS, LOSSES, Attack, gradient


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf.

    Args: eps (default 8/255), loss ("ce" or "cw"), seed. Inputs (N, C, H, W) in [0, 1].
    """

    def __init__(self, eps: float = 8 / 255, loss: str = "ce", seed: int = 0) -> None:
        super().__init__(eps=eps, norm="linf", seed=seed)
        if loss not in LOSSES:
            from robustdistill.errors import UserInputError

            raise UserInputError("loss", f"unknown loss {loss!r}", f"use one of {sorted(LOSSES)}")
        self.loss = loss

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grad, _ = gradient(model, x, y, LOSSES[self.loss])
        return x + self.eps * grad.sign()
