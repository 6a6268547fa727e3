"""APGD-T: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (the second attack of AutoAttack).

Threat model: L-inf or L2 ball of radius eps. Auto-PGD on the targeted Difference of Logits Ratio loss, run once
per target class: the 2nd, 3rd, ... most likely classes of the clean input (9 targets in AutoAttack standard, fewer
when the model has fewer than 10 classes), each run only on the points still robust. The engine is the port of the
official code in :mod:`robustdistill.attacks.apgd`.
"""

from __future__ import annotations

import torch
from torch import nn

from robustdistill.attacks.apgd import apgd_attack, check_apgd_params
from robustdistill.attacks.base import ATTACKS, Attack, Norm
from robustdistill.errors import UserInputError


@ATTACKS.register("apgd-t")
class APGDT(Attack):
    """Targeted Auto-PGD on the DLR loss (Croce & Hein 2020), L-inf or L2; needs a model with >= 4 classes.

    Args:
        eps: radius (default 8/255).
        norm: "linf" or "l2".
        steps: iterations per target class (default 100, the official setting).
        n_target_classes: target classes tried, capped at (number of classes - 1) (default 9, AutoAttack standard).
        restarts: random restarts per target (default 1, AutoAttack standard).
        rho: step-size decrease threshold (default 0.75).
        seed: seeds the random starting points.
    Inputs (N, C, H, W) in [0, 1]; returns x_adv of the same shape and dtype (points never fooled unchanged).
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: Norm = "linf",
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed)
        check_apgd_params(steps, restarts, rho)
        if n_target_classes < 1:
            raise UserInputError("n_target_classes", f"must be >= 1, got {n_target_classes}")
        self.steps = int(steps)
        self.n_target_classes = int(n_target_classes)
        self.restarts = int(restarts)
        self.rho = float(rho)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return apgd_attack(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, restarts=self.restarts, rho=self.rho,
            loss="dlr-targeted", generator=generator, n_target_classes=self.n_target_classes,
        )
