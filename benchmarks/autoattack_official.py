"""Our AutoAttack and its four components beside the official code, on the same digits model, points and seed.

The official code is the PyPI package ``pyautoattack`` 0.2.0 (Croce and Hein's fra31/auto-attack, packaged; in the
dev extra and constraints.txt: it declares no dependencies and imports only torch and numpy). For each attack, the
same model (the cnn-small that tests/attacks/test_attacks_support.py trains on the digits train split), the same
class-balanced test points and the same seed go to ours and to the official one; the script prints, per attack, whether the
adversarial examples are identical, the largest absolute difference, the same after putting the official examples
through our base class's final projection onto the eps-ball and [0, 1] (which every attack of ours ends with; in
float32 it re-rounds a few values), the points whose outcome (fooled or not) differs and both robust accuracies.

Measured (200 points, 64 for AutoAttack, official settings, seed 0): every component and AutoAttack gives the official
per-point outcomes and robust accuracy, L-inf 0.125 and 0.06 and L2 1.0; Square's examples are identical, APGD-CE's,
APGD-T's and FAB-T's differ by at most 6e-8 (1.9e-9 L-inf), AutoAttack's by 9.3e-10 (L-inf; L2 identical), and
all of them are bit for bit the official examples after our final projection.

Seeds: APGD-CE, APGD-T and FAB-T take the integer seed, as the official ones do. Our Square (torchattacks' copy of the
official code) seeds itself with a number drawn from our seeded generator (robustdistill.attacks._peer.draw_seed),
so the official SquareAttack gets that drawn number; inside AutoAttack the official code reseeds Square with the
plain seed, so the full-AutoAttack comparison is run twice: as the official code runs it, and with its Square given
the drawn seed (what "the same seed" means for our Square).

    python benchmarks/autoattack_official.py              # 200 points per component, 64 for AutoAttack (minutes)
    python benchmarks/autoattack_official.py --quick      # 32 points, fewer iterations and queries (seconds)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "attacks"))  # the attack tests' digits model and points, shared

from test_attacks_support import digits_model, test_points  # noqa: E402

from robustdistill import attacks  # noqa: E402
from robustdistill.attacks._peer import draw_seed  # noqa: E402
from robustdistill.attacks.base import project  # noqa: E402

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
OFFICIAL_NORMS = {"linf": "Linf", "l2": "L2"}


def drawn_seed(seed: int) -> int:
    """The seed our Square passes to its random search for ``seed`` (the first draw of a fresh generator)."""
    return draw_seed(torch.Generator().manual_seed(seed))


def official_component(name: str, model: nn.Module, eps: float, norm: str, seed: int, steps: int,
                       n_queries: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The official attack as AutoAttack standard configures it."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    official_norm = OFFICIAL_NORMS[norm]
    if name == "apgd-ce":
        atk = APGDAttack(model, n_restarts=1, n_iter=steps, eps=eps, norm=official_norm, seed=seed, loss="ce",
                         eot_iter=1, rho=0.75, device="cpu")
    elif name == "apgd-t":
        atk = APGDAttack_targeted(model, n_restarts=1, n_iter=steps, eps=eps, norm=official_norm, seed=seed,
                                  n_target_classes=9, eot_iter=1, rho=0.75, device="cpu")
    elif name == "fab-t":
        atk = FABAttack_PT(model, norm=official_norm, n_restarts=1, n_iter=steps, eps=eps, seed=seed,
                           targeted=True, n_target_classes=9, device="cpu")
    else:
        atk = SquareAttack(model, p_init=0.8, n_queries=n_queries, eps=eps, norm=official_norm, n_restarts=1,
                           seed=drawn_seed(seed), resc_schedule=False, device="cpu")
    return atk.perturb


def ours_component(name: str, eps: float, norm: str, seed: int, steps: int, n_queries: int) -> attacks.Attack:
    if name == "square":
        return attacks.create("square", eps=eps, norm=norm, n_queries=n_queries, seed=seed)
    targets = {"n_target_classes": 9} if name in ("apgd-t", "fab-t") else {}
    return attacks.create(name, eps=eps, norm=norm, steps=steps, seed=seed, **targets)


@dataclass
class Comparison:
    attack: str
    norm: str
    eps: float
    n: int
    max_abs_diff: float
    max_abs_diff_projected: float  # against the official examples after our final projection
    outcome_mismatches: int
    robust_ours: float
    robust_official: float

    @property
    def identical(self) -> bool:
        return self.max_abs_diff == 0.0

    def line(self) -> str:
        same = "identical" if self.identical else f"max |diff| {self.max_abs_diff:.2g}"
        projected = "identical" if self.max_abs_diff_projected == 0 else f"{self.max_abs_diff_projected:.2g}"
        return (f"{self.attack:<24} {self.norm:<4} eps {self.eps:<6g} n {self.n:<4} {same:<18} "
                f"after our projection {projected:<10} "
                f"outcome mismatches {self.outcome_mismatches:<3} robust ours {self.robust_ours:.4f} "
                f"official {self.robust_official:.4f}")


def compare_examples(attack: str, norm: str, eps: float, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     ours: torch.Tensor, official: torch.Tensor) -> Comparison:
    with torch.no_grad():
        fooled_ours = model(ours).argmax(1) != y
        fooled_official = model(official).argmax(1) != y
    projected = project(official, x, eps, norm)  # type: ignore[arg-type]
    return Comparison(attack, norm, eps, len(x), float((ours.double() - official.double()).abs().max()),
                      float((ours.double() - projected.double()).abs().max()), int((fooled_ours != fooled_official).sum()), 1 - float(fooled_ours.float().mean()),
                      1 - float(fooled_official.float().mean()))


def compare_component(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                      seed: int = 0, steps: int = 100, n_queries: int = 5000) -> Comparison:
    """One component, ours and the official, from the same model, points and seed."""
    model.eval()
    ours = ours_component(name, eps, norm, seed, steps, n_queries)(model, x, y)
    with torch.random.fork_rng():  # the official attacks reseed the global RNG
        official = official_component(name, model, eps, norm, seed, steps, n_queries)(x.clone(), y.clone())
    return compare_examples(name, norm, eps, model, x, y, ours, official.detach())


def compare_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int = 0,
                       align_square_seed: bool = True) -> Comparison:
    """AutoAttack standard (all four components, official settings), ours and the official run_standard_evaluation.
    ``align_square_seed``: give the official Square the seed our Square draws (see the module docstring)."""
    from pyautoattack import AutoAttack

    model.eval()
    ours = attacks.create("autoattack", eps=eps, norm=norm, seed=seed)(model, x, y)
    official = AutoAttack(model, norm=OFFICIAL_NORMS[norm], eps=eps, seed=seed, version="standard", device="cpu")
    official.verbose = False
    if align_square_seed:
        perturb = official.square.perturb

        def square_with_drawn_seed(x_sub: torch.Tensor, y_sub: torch.Tensor) -> torch.Tensor:
            official.square.seed = drawn_seed(seed)  # AutoAttack has just set it to the plain seed
            return perturb(x_sub, y_sub)

        official.square.perturb = square_with_drawn_seed
    with torch.random.fork_rng():
        x_official, _ = official.run_standard_evaluation(x.clone(), y.clone(), batch_size=len(x))
    name = "autoattack" + (" (square seed)" if align_square_seed else " (as official)")
    return compare_examples(name, norm, eps, model, x, y, ours, x_official.detach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200, help="test points per component")
    parser.add_argument("--aa-points", type=int, default=64, help="test points for the whole AutoAttack")
    parser.add_argument("--quick", action="store_true", help="32 points, 20 iterations, 500 queries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and the same kernels as the tests
    steps, queries = (20, 500) if args.quick else (100, 5000)
    points = 32 if args.quick else args.points
    model = digits_model()
    x, y = test_points(points)
    settings = [("linf", 0.125), ("linf", 0.06), ("l2", 1.0)]
    rows = [compare_component(name, model, x, y, eps, norm, args.seed, steps, queries)
            for norm, eps in settings for name in COMPONENTS]
    if not args.quick:
        x_aa, y_aa = test_points(args.aa_points)
        rows += [compare_autoattack(model, x_aa, y_aa, eps, norm, args.seed, align)
                 for norm, eps in (("linf", 0.125), ("l2", 1.0)) for align in (True, False)]
    for row in rows:
        print(row.line(), flush=True)
    print(f"identical: {sum(r.identical for r in rows)} of {len(rows)}; identical after our projection: "
          f"{sum(r.max_abs_diff_projected == 0 for r in rows)} of {len(rows)}; "
          f"same per-point outcomes: {sum(r.outcome_mismatches == 0 for r in rows)} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
