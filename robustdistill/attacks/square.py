"""Square Attack: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (the fourth attack of AutoAttack).

Threat model: L-inf or L2 ball of radius eps, black-box (score-based): random search over square-shaped updates
of the margin loss on the logits, using only forward passes. Being gradient-free, it is the AutoAttack component
that gradient masking cannot fool.

Uses torchattacks' Square, a copy of the official code (fra31/auto-attack, autoattack/square.py), with AutoAttack's
settings: 5000 queries, p_init 0.8, margin loss and ``resc_schedule=False`` (torchattacks' default True rescales
the square-size schedule), our seed (not the global RNG), and the model left in the mode our base class set. One
official line torchattacks lacks is restored: the square side is capped at the image side, so non-square images
work. Checked against the official SquareAttack (pyautoattack 0.2.0) on the digits model, L-inf and L2, given the
seed ours draws from our generator (tests/attacks/test_autoattack_official.py): bit for bit the official examples.
"""

from __future__ import annotations

import torch
from torch import nn

from robustdistill.attacks import _peer
from robustdistill.attacks.base import ATTACKS, Attack, Norm
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_QUERIES, check_int, check_restarts

_NORMS = {"linf": "Linf", "l2": "L2"}


def _capped_square(torchattacks_square: type) -> type:
    class CappedSquare(torchattacks_square):  # type: ignore[misc, valid-type]
        """torchattacks' Square with the official ``s = min(s, min(h, w))``: p is capped so that the side
        ``round(sqrt(p * h * w))`` never exceeds the shorter image side (odd for L2, as the L2 update needs)."""

        def attack_single_run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h, w = x.shape[-2:]
            side = min(h, w)
            if self.norm == "L2" and side % 2 == 0:
                side -= 1
            self._p_cap = side**2 / (h * w)
            return super().attack_single_run(x, y)

        def p_selection(self, it: int) -> float:
            return min(super().p_selection(it), self._p_cap)

    return CappedSquare


@ATTACKS.register("square")
class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), L-inf or L2, black-box random search on the margin loss.

    Args:
        eps: radius (default 8/255).
        norm: "linf" or "l2".
        n_queries: queries per point (default 5000, AutoAttack standard).
        p_init: initial fraction of pixels changed per query (default 0.8).
        restarts: random restarts on the points still robust (default 1).
        resc_schedule: rescale the square-size schedule to n_queries (default False, as AutoAttack runs it).
        seed: seeds the random search.
    Inputs (N, C, H, W) in [0, 1]; returns x_adv of the same shape and dtype (points never fooled unchanged).
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: Norm = "linf",
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        resc_schedule: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, seed=seed)
        n_queries = check_int("n_queries", n_queries, 1, MAX_QUERIES)
        if not 0 < p_init <= 1:
            raise UserInputError("p_init", f"must be in (0, 1], got {p_init}", "the paper uses 0.8")
        restarts = check_restarts("restarts", restarts)
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.restarts = int(restarts)
        self.resc_schedule = bool(resc_schedule)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4:
            raise UserInputError("x", f"Square needs images (N, C, H, W), got shape {tuple(x.shape)}")
        if self.norm == "l2" and min(x.shape[-2:]) < 5:
            raise UserInputError("x", "L2 Square needs images at least 5 pixels on a side", "use norm='linf'")
        torchattacks = _peer.import_torchattacks()
        seed = _peer.draw_seed(generator)
        square = _capped_square(torchattacks.Square)(
            model, norm=_NORMS[self.norm], eps=self.eps, n_queries=self.n_queries, n_restarts=self.restarts,
            p_init=self.p_init, loss="margin", resc_schedule=self.resc_schedule, seed=seed, verbose=False,
        )
        square.set_device(x.device)
        with _peer.isolated(model):
            # perturb, not __call__: __call__ would force model.eval().
            return square.perturb(x.clone(), y.clone()).detach()

