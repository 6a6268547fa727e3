"""CW-Linf: the Carlini-Wagner margin loss (Carlini and Wagner, "Towards Evaluating the Robustness of Neural
Networks", IEEE S&P 2017) maximised with PGD (Madry et al., ICLR 2018) in an L-inf ball.

Threat model: L-inf ball of radius eps. This is the "CW-inf" column of robust-training papers (e.g. TRADES,
Zhang et al. 2019; MART, Wang et al. 2020): PGD whose loss is max_{i != y} Z_i - Z_y on the logits, with the true
class masked out by -inf so that it is correct for negative logits.
"""

from __future__ import annotations

from robustdistill.attacks.base import ATTACKS
from robustdistill.attacks.pgd import PGD


@ATTACKS.register("cw-linf")
class CWLinf(PGD):
    """PGD on the Carlini-Wagner margin loss (Carlini & Wagner 2017; Madry et al. 2018), L-inf.

    Args:
        eps: radius (default 8/255).
        alpha: step size (default eps/4).
        steps: iterations (default 20, the CW-inf evaluation of TRADES/MART).
        random_start: uniform random start in the ball (default True).
        restarts: independent random starts; each sample keeps its first successful one.
        seed: seeds the random starts.
    Inputs (N, C, H, W) in [0, 1]; returns x_adv of the same shape and dtype.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 20,
        random_start: bool = True,
        restarts: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            eps=eps, alpha=alpha, steps=steps, norm="linf", random_start=random_start, restarts=restarts,
            loss="cw", seed=seed,
        )
