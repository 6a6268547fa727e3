"""Gradient-masking checks: the evaluation pitfalls of Athalye, Carlini and Wagner (ICML 2018) and the checklist
of Carlini et al., "On Evaluating Adversarial Robustness" (2019), as flags with their evidence.

Two places run them: the ``masking`` probe (its own attack variants on one model) and the runner, across the
probes of a suite (:func:`cross_checks`). A flagged model's robust accuracy is not to be trusted, and every
gate on its robust metrics fails (see audits/build.py).

A difference counts only when it exceeds a tolerance *and* two standard errors of the paired difference
(:func:`robustdistill.stats.paired_excess`), so sampling noise on a few hundred points is not a flag.

What the tolerances can miss. ``TOLERANCE`` (0.05) covers checks (a) iterative vs single-step, (b) black-box vs
white-box (more than 5% of the points, and more than 2), (d) more steps or restarts, and ``curve_not_decreasing``.
``LOSS_TOLERANCE`` (0.20) covers the loss and logit-scale checks (``loss_sensitive``, ``logit_scale_sensitive``). It
was set on ONE digits model - a briefly adversarially trained CNN whose cross-entropy PGD trails the margin attacks
by up to ~13 points while defensive distillation opens a gap of ~80 - and has not been calibrated anywhere else. So:

- masking that costs a cross-entropy attack up to 20 points is NOT flagged (more on samples under ~100 points,
  where two standard errors of the paired difference exceed 0.20) - e.g. a model whose softmax saturates on a fifth
  of its points. Such a model's CE-PGD number overstates its robustness by that much, unflagged.
- on another dataset or architecture a healthy model may trail by more than 20 points and be flagged falsely.
- every check compares attacks with each other: masking that fools all of them alike (e.g. a non-differentiable
  pre-processing layer defeating both CE and margin gradients, where Square also fails within its budget) leaves no
  gap to detect. An unflagged model is not proof of honest gradients.

Read the worst case over attacks (AutoAttack), not a CE-PGD number; lower ``loss_tolerance`` (and ``tolerance``) in
a suite's masking probe for a stricter check on a new kind of model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustdistill.stats import paired_excess

KIND = "gradient_masking"
SINGLE_STEP = frozenset({"fgsm"})
ITERATIVE = frozenset({"pgd", "apgd-ce", "apgd-t", "autoattack", "cw-linf", "fab-t"})
# Attacks whose loss ignores the scale of the logits (margin / DLR / minimum-norm): masking by saturating the
# softmax cannot fool them, so they are the yardstick for CE-gradient attacks.
SCALE_INVARIANT = frozenset({"autoattack", "apgd-t", "cw-linf", "fab-t", "square"})
BLACK_BOX = frozenset({"square"})
# A cross-entropy attack may trail a margin/DLR attack of the same budget by several points on a healthy model (up
# to ~13 on a briefly adversarially trained digits CNN); defensive distillation opens a gap of ~80. Tuned on that one
# digits model only: see the module docstring for what 0.20 can miss.
LOSS_TOLERANCE = 0.20
TOLERANCE = 0.05


def flag(model: str, check: str, evidence: str) -> dict[str, Any]:
    return {"kind": KIND, "model": model, "check": check, "evidence": evidence}


def pct(mask: np.ndarray) -> str:
    return f"{100 * float(mask.mean()) if mask.size else 0.0:.1f}%"


def excess_flag(role: str, check: str, higher: np.ndarray, lower: np.ndarray, tolerance: float,
                evidence: Callable[[float, int], str]) -> list[dict[str, Any]]:
    """``[flag]`` when accuracy under ``higher`` (a per-point "still correct" mask) exceeds that under ``lower`` by
    more than ``tolerance`` and two standard errors of the paired difference, else ``[]``. ``evidence(points,
    discordant)`` words the flag: the excess in percentage points and the number of discordant points."""
    worse, diff, disc = paired_excess(higher, lower, tolerance=tolerance)
    return [flag(role, check, evidence(100 * diff, disc))] if worse else []


def white_box_robust(results: Mapping[str, np.ndarray], scaled: Mapping[float, np.ndarray]) -> np.ndarray:
    """Points still correct under every gradient attack the masking probe ran at the threat model's eps."""
    masks = [mask for key, mask in results.items() if key not in ("worst_case", "large_eps")] + list(scaled.values())
    return np.logical_and.reduce(masks)


def probe_checks(
    role: str,
    results: Mapping[str, np.ndarray],
    scaled: Mapping[float, np.ndarray],
    tolerance: float,
    large_eps_max_accuracy: float,
    eps: float,
    large_eps: float,
    *,
    steps: int,
    more_steps: int,
    restarts: int,
    loss_tolerance: float = 0.20,
) -> list[dict[str, Any]]:
    """The masking probe's checks on one model, from per-point "still correct" masks."""
    flags: list[dict[str, Any]] = []
    pgd, n = results["pgd"], results["pgd"].size
    # (a) iterative weaker than single-step
    flags += excess_flag(role, "iterative_weaker_than_single_step", pgd, results["single_step"], tolerance,
                         lambda points, disc: f"PGD-{steps} robust accuracy {pct(pgd)} is above single-step FGSM's "
                         f"{pct(results['single_step'])} at eps={eps:g} (+{points:.1f} points, {disc} discordant of "
                         f"{n}): the gradient misleads the iterative attack")
    # (b) black-box beats white-box
    if "worst_case" in results:
        # Points every white-box variant missed (the large-eps one aside) and Square then broke.
        only_black = white_box_robust(results, scaled) & ~results["worst_case"]
        count = int(only_black.sum())
        if count > max(tolerance * n, 2):
            flags.append(flag(role, "black_box_beats_white_box",
                              f"Square (black-box) broke {count} of {n} points that every gradient attack (FGSM, "
                              f"PGD-{steps} on CE and on the CW margin, PGD-{more_steps}, {restarts} restarts, "
                              f"rescaled logits) missed at eps={eps:g}"))
    # (c) no saturation at a very large eps
    large = results["large_eps"]
    if float(large.mean()) > large_eps_max_accuracy:
        flags.append(flag(role, "large_eps_not_saturating",
                          f"PGD robust accuracy is still {pct(large)} at eps={large_eps:g} (expected about 0: at this "
                          f"radius every image can be moved to flat grey); the attack's gradient is uninformative"))
    # (d) accuracy still falling with more steps or restarts
    for key, label in (("pgd_more_steps", f"PGD-{more_steps}"), ("pgd_restarts", f"PGD-{steps} x{restarts} restarts")):
        flags += excess_flag(role, "more_iterations_keep_lowering", pgd, results[key], tolerance,
                             lambda points, disc: f"{label} robust accuracy {pct(results[key])} is {points:.1f} points "
                             f"below PGD-{steps}'s {pct(pgd)} at eps={eps:g} ({disc} discordant of {n}): the attack "
                             "has not converged, so fixed-budget numbers overstate robustness")
    # (e) logit rescaling and loss choice
    moved = []
    for scale, mask in scaled.items():
        worse, diff, _ = paired_excess(pgd, mask, tolerance=loss_tolerance)
        if worse:
            moved.append(f"logits x{scale:g}: {pct(mask)}")
    if moved:
        flags.append(flag(role, "logit_scale_sensitive",
                          f"CE-PGD-{steps} robust accuracy {pct(pgd)} drops when the logits are rescaled ("
                          + "; ".join(moved) + f") at eps={eps:g}: saturated softmax gradients, not robustness "
                          "(the signature of defensive distillation)"))
    flags += excess_flag(role, "loss_sensitive", pgd, results["cw_loss"], loss_tolerance,
                         lambda points, disc: f"PGD-{steps} on the CW margin loss reaches {pct(results['cw_loss'])} "
                         f"robust accuracy, {points:.1f} points below cross-entropy PGD-{steps}'s {pct(pgd)} at "
                         f"eps={eps:g} ({disc} discordant of {n}): cross-entropy gradients are masked")
    return flags


@dataclass(frozen=True)
class AttackResult:
    """One attack probe's outcome on one model, as the cross checks need it."""

    probe: str
    attack: str
    eps: float | None
    norm: str
    loss: str
    robust: np.ndarray
    clean: np.ndarray
    masks: Mapping[str, np.ndarray]

    @property
    def label(self) -> str:
        return self.probe if self.probe == self.attack else f"{self.probe} ({self.attack})"

    def same_threat(self, other: AttackResult) -> bool:
        return (self.norm == other.norm and self.eps is not None and other.eps is not None
                and abs(self.eps - other.eps) < 1e-12)


def cross_checks(
    role: str,
    attacks: Sequence[AttackResult],
    curves: Sequence[tuple[str, list[tuple[float, np.ndarray]]]],
    *,
    tolerance: float = TOLERANCE,
    loss_tolerance: float = LOSS_TOLERANCE,
) -> list[dict[str, Any]]:
    """Checks across a model's attack and curve probes (tolerances from the suite's masking probe, if any)."""
    flags: list[dict[str, Any]] = []
    for single in (a for a in attacks if a.attack in SINGLE_STEP):
        for iterative in (a for a in attacks if a.attack in ITERATIVE and a.same_threat(single)):
            flags += excess_flag(role, "iterative_weaker_than_single_step", iterative.robust, single.robust, tolerance,
                                 lambda points, disc: f"{iterative.label} robust accuracy {pct(iterative.robust)} is "
                                 f"above {single.label}'s {pct(single.robust)} at eps={single.eps:g} (+{points:.1f} "
                                 f"points, {disc} discordant of {single.robust.size})")
    for black in (a for a in attacks if a.attack in BLACK_BOX):
        white = [a for a in attacks if a.attack not in BLACK_BOX and a.attack != "autoattack" and a.same_threat(black)]
        if not white:
            continue
        missed = np.logical_and.reduce([a.robust for a in white]) & ~black.robust
        count, n = int(missed.sum()), missed.size
        if count > max(tolerance * n, 2):
            flags.append(flag(role, "black_box_beats_white_box",
                              f"{black.label} (black-box) broke {count} of {n} points that "
                              f"{', '.join(a.label for a in white)} all missed at eps={black.eps:g}"))
    for auto in (a for a in attacks if a.attack == "autoattack"):
        square = auto.masks.get("broken_by_square")
        if square is not None:
            count, n = int(square.sum()), square.size
            if count > max(tolerance * n, 2):
                flags.append(flag(role, "black_box_beats_white_box",
                                  f"inside {auto.label}, Square (black-box) broke {count} of {n} points that APGD-CE, "
                                  f"APGD-T and FAB-T missed at eps={auto.eps:g}"))
    for strong in (a for a in attacks if a.attack in SCALE_INVARIANT and a.attack not in BLACK_BOX):
        ce_iterative = [a for a in attacks
                        if a.loss == "ce" and a.attack in ITERATIVE and a.attack not in SCALE_INVARIANT]
        for ce in (a for a in ce_iterative if a.same_threat(strong)):
            flags += excess_flag(role, "loss_sensitive", ce.robust, strong.robust, loss_tolerance,
                                 lambda points, disc: f"{ce.label} (cross-entropy gradients) leaves {pct(ce.robust)} "
                                 f"robust accuracy, {strong.label} (logit-scale-invariant loss) only "
                                 f"{pct(strong.robust)} at eps={ce.eps:g} ({points:.1f} points, {disc} discordant of "
                                 f"{ce.robust.size}): cross-entropy gradients are masked")
    for name, points in curves:
        ordered = sorted(points, key=lambda p: p[0])
        for (eps_a, mask_a), (eps_b, mask_b) in zip(ordered, ordered[1:]):
            flags += excess_flag(role, "curve_not_decreasing", mask_b, mask_a, tolerance,
                                 lambda points, _: f"{name}: robust accuracy rises from {pct(mask_a)} at eps={eps_a:g} "
                                 f"to {pct(mask_b)} at eps={eps_b:g} (+{points:.1f} points); a larger ball contains "
                                 "the smaller one, so the attack is failing")
    return flags


def dedupe(flags: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for item in flags:
        key = (item["model"], item["check"], item["evidence"])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out
