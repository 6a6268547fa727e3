"""AutoAttack: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020.

Threat model: L-inf or L2 ball of radius eps. The standard version with the official settings (fra31/auto-attack,
autoattack.py, ``version='standard'``): APGD-CE (100 iterations, no restarts), APGD-T (9 target classes, 100
iterations), FAB-T (9 target classes, 100 iterations), Square (5000 queries), run in that order, each only on the
points still robust; a point's result is the first adversarial example found for it (per-point worst case).
Unlike torchattacks' AutoAttack: 100 iterations (not 10), an explicit seed (not ``time.time()``), the number of
target classes from the model's output (not ``n_classes=10``), and a record of which attack broke each point.
Checked against the official AutoAttack (pyautoattack 0.2.0, ``version='standard'``) with the same seed on the
digits model (tests/attacks/test_autoattack_official.py, benchmarks/autoattack_official.py): the same per-point
outcomes and robust accuracy (all four components on 64 test points at L-inf 0.125 and L2 1.0; each component on
200 points at L-inf 0.125 and 0.06 and L2 1.0), and the same examples up to float32 rounding of our final
projection (at most 9.3e-10 here; up to 6e-8 for a single component). Square draws its seed from ours; with the
official code's own Square seed the outcomes were the same.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from robustdistill.attacks.apgd import APGDCE
from robustdistill.attacks.apgd_t import APGDT
from robustdistill.attacks.base import ATTACKS, Attack, Norm, project
from robustdistill.attacks.fab_t import FABT
from robustdistill.attacks.square import Square
from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack, standard version (Croce & Hein 2020), L-inf or L2, with the official settings as defaults.

    Args:
        eps: radius (default 8/255, RobustBench CIFAR-10 L-inf).
        norm: "linf" or "l2".
        steps: APGD-CE, APGD-T and FAB-T iterations (default 100, official).
        n_queries: Square queries (default 5000, official).
        n_target_classes: targets of APGD-T and FAB-T, capped at (number of classes - 1) (default 9, official).
        attacks: which of "apgd-ce", "apgd-t", "fab-t", "square" to run, in order (default all four: standard).
        seed: seeds every component (each starts from the same seeded RNG state, as in the official code).
    Inputs (N, C, H, W) in [0, 1]; returns x_adv of the same shape and dtype.

    After a call: ``last_success`` (bool per point, from the base class); ``last_broken_by``, a list with one
    entry per point: the name of the component that broke it, "clean" if it was misclassified to begin with, or
    None if it stayed robust; ``last_accuracy``, robust accuracy after each stage
    (``{"clean": ..., "apgd-ce": ..., ...}``, like the official ``robust_accuracy_dict``).
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: Norm = "linf",
        steps: int = 100,
        n_queries: int = 5000,
        n_target_classes: int = 9,
        attacks: list[str] | tuple[str, ...] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed)
        chosen = tuple(STANDARD if attacks is None else attacks)
        unknown = [a for a in chosen if a not in STANDARD]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            raise UserInputError("attacks", f"{list(chosen)} is not a list of distinct AutoAttack components",
                                 f"choose from {list(STANDARD)}")
        self.steps = int(steps)
        self.n_queries = int(n_queries)
        self.n_target_classes = int(n_target_classes)
        self.attacks = chosen
        for name in STANDARD:  # build each component once now: bad parameters fail here, not mid-audit
            self._component(name)
        self.last_broken_by: list[str | None] | None = None
        self.last_accuracy: dict[str, float] | None = None

    def _component(self, name: str) -> Attack:
        eps, norm, seed, steps, targets = self.eps, self.norm, self.seed, self.steps, self.n_target_classes
        if name == "apgd-ce":
            return APGDCE(eps=eps, norm=norm, steps=steps, restarts=1, seed=seed)
        if name == "apgd-t":
            return APGDT(eps=eps, norm=norm, steps=steps, n_target_classes=targets, restarts=1, seed=seed)
        if name == "fab-t":
            return FABT(eps=eps, norm=norm, steps=steps, n_target_classes=targets, seed=seed)
        return Square(eps=eps, norm=norm, n_queries=self.n_queries, seed=seed)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        with torch.no_grad():
            logits = model(x)
        num_classes = logits.shape[1]
        robust = logits.argmax(1) == y
        broken_by: list[str | None] = [None if bool(r) else "clean" for r in robust]
        accuracy = {"clean": robust.float().mean().item() if n else 0.0}
        adv = x.clone()
        # Every component starts from the same RNG state, as the official code reseeds each one with the seed:
        # with a fresh generator, APGD-CE, APGD-T and FAB-T give exactly the official examples.
        start_state = generator.get_state()
        for name in self.attacks:
            if name == "apgd-t" and num_classes < 4:
                log.warning("AutoAttack: skipping APGD-T, its DLR loss needs >= 4 classes (the model has %d)",
                            num_classes)
                continue
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                accuracy[name] = 0.0
                continue
            generator.set_state(start_state)
            x_sub = self._component(name).perturb(model, x[idx], y[idx], generator)
            x_sub = project(x_sub.detach(), x[idx], self.eps, self.norm)
            with torch.no_grad():
                fooled = model(x_sub).argmax(1) != y[idx]
            broken = idx[fooled]
            adv[broken] = x_sub[fooled]
            robust[broken] = False
            for i in broken.tolist():
                broken_by[i] = name
            accuracy[name] = robust.float().mean().item()
            log.info("AutoAttack: robust accuracy after %s: %.2f%% (%d of %d points)", name.upper(),
                     100 * accuracy[name], int(robust.sum()), n)
        self.last_broken_by = broken_by
        self.last_accuracy = accuracy
        return adv
