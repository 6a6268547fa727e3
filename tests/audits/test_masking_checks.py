"""The gradient-masking checks' logic on SYNTHETIC per-point masks (they test the comparisons and tolerances, not a
model): for each check of masking.probe_checks ((a)-(e)) and masking.cross_checks, one input that must flag and one
just inside the tolerance that must not, so a flipped comparison, a >= for a >, or a wrong tolerance fails a test.

400 points, 200 of them robust under every attack at the start. A gap of k points is k/400: the 0.05 tolerance sits
at 20 points and the 0.20 loss tolerance at 80, both well above two paired standard errors (2 sqrt(k) / 400)."""

from __future__ import annotations

import numpy as np
import pytest

from robustdistill.audits import masking
from robustdistill.audits.masking import AttackResult

N = 400
TOL, LOSS_TOL, LARGE_EPS_MAX = 0.05, 0.20, 0.1
JUST_OVER, JUST_INSIDE = 21, 20  # points of a 0.05 gap on 400
LOSS_OVER, LOSS_INSIDE = 81, 80  # points of a 0.20 gap on 400


def base() -> np.ndarray:
    mask = np.zeros(N, dtype=bool)
    mask[:200] = True
    return mask


def broken(k: int, start: int = 0) -> np.ndarray:
    """The base mask with k of its robust points broken (from index ``start`` on)."""
    mask = base()
    mask[start:start + k] = False
    return mask


def healthy() -> tuple[dict[str, np.ndarray], dict[float, np.ndarray]]:
    results = {key: base() for key in ("pgd", "single_step", "pgd_more_steps", "pgd_restarts", "cw_loss", "worst_case")}
    results["large_eps"] = np.zeros(N, dtype=bool)
    return results, {10.0: base(), 0.1: base()}


def checks(results: dict[str, np.ndarray], scaled: dict[float, np.ndarray]) -> list[str]:
    flags = masking.probe_checks("student", results, scaled, TOL, LARGE_EPS_MAX, 0.125, 1.0, steps=20, more_steps=100,
                                 restarts=5, loss_tolerance=LOSS_TOL)
    assert all(f["kind"] == "gradient_masking" and f["model"] == "student" and f["evidence"] for f in flags)
    return [f["check"] for f in flags]


def test_a_healthy_model_raises_no_flag() -> None:
    assert checks(*healthy()) == []


@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_a_iterative_weaker_than_single_step(k: int, flagged: bool) -> None:
    results, scaled = healthy()
    results["single_step"] = broken(k)  # FGSM breaks k points PGD missed: PGD accuracy is k/400 higher
    assert checks(results, scaled) == (["iterative_weaker_than_single_step"] if flagged else [])


def test_a_the_other_way_round_is_no_flag_and_noise_is_not_a_flag() -> None:
    results, scaled = healthy()
    results["pgd"] = broken(100)  # PGD far stronger than FGSM: what should happen
    assert "iterative_weaker_than_single_step" not in checks(results, scaled)
    # 40 points: a 0.075 gap, above the tolerance but within two standard errors (2 sqrt(3) / 40 = 0.087).
    small = {key: mask[:40] for key, mask in healthy()[0].items()}
    small["single_step"] = small["pgd"].copy()
    small["single_step"][:3] = False
    assert "iterative_weaker_than_single_step" not in checks(small, {10.0: small["pgd"]})


@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_b_black_box_beats_white_box(k: int, flagged: bool) -> None:
    results, scaled = healthy()
    results["worst_case"] = broken(k)  # Square breaks k points every gradient attack missed
    assert checks(results, scaled) == (["black_box_beats_white_box"] if flagged else [])


def test_b_counts_only_points_that_every_white_box_attack_missed() -> None:
    results, scaled = healthy()
    results["worst_case"] = broken(30)  # 30 points, but a rescaled-logit PGD already broke 10 of them
    scaled[10.0] = broken(10)
    assert "black_box_beats_white_box" not in checks(results, scaled)
    scaled[10.0] = broken(10, start=100)  # the same 10 breaks elsewhere: now 30 only Square found
    assert "black_box_beats_white_box" in checks(results, scaled)


@pytest.mark.parametrize(("k", "flagged"), [(41, True), (40, False)])
def test_c_large_eps_not_saturating(k: int, flagged: bool) -> None:
    results, scaled = healthy()
    results["large_eps"][:k] = True  # k/400 still robust at the very large eps (the limit is 0.1 = 40 points)
    assert checks(results, scaled) == (["large_eps_not_saturating"] if flagged else [])


@pytest.mark.parametrize("key", ["pgd_more_steps", "pgd_restarts"])
@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_d_more_iterations_keep_lowering(key: str, k: int, flagged: bool) -> None:
    results, scaled = healthy()
    results[key] = broken(k)
    assert checks(results, scaled) == (["more_iterations_keep_lowering"] if flagged else [])


@pytest.mark.parametrize(("k", "flagged"), [(LOSS_OVER, True), (LOSS_INSIDE, False)])
def test_e_logit_scale_sensitive_uses_the_loss_tolerance(k: int, flagged: bool) -> None:
    results, scaled = healthy()
    scaled[10.0] = broken(k)
    assert checks(results, scaled) == (["logit_scale_sensitive"] if flagged else [])


@pytest.mark.parametrize(("k", "flagged"), [(LOSS_OVER, True), (LOSS_INSIDE, False)])
def test_e_loss_sensitive_uses_the_loss_tolerance(k: int, flagged: bool) -> None:
    results, scaled = healthy()
    results["cw_loss"] = broken(k)  # PGD on the CW margin is k/400 stronger than CE-PGD
    assert checks(results, scaled) == (["loss_sensitive"] if flagged else [])


# ---------------------------------------------------------------------------------------------------------------
# Cross checks over a suite's attack and curve probes (default tolerances: masking.TOLERANCE and LOSS_TOLERANCE)


def attack(name: str, robust: np.ndarray, *, eps: float = 0.125, loss: str = "ce", probe: str | None = None,
           masks: dict[str, np.ndarray] | None = None) -> AttackResult:
    return AttackResult(probe=probe or name, attack=name, eps=eps, norm="linf", loss=loss, robust=robust,
                        clean=np.ones(N, dtype=bool), masks=masks or {})


def cross(attacks: list[AttackResult], curves: list | None = None) -> list[str]:  # type: ignore[type-arg]
    return [f["check"] for f in masking.cross_checks("student", attacks, curves or [])]


def test_the_module_tolerances_are_the_documented_ones() -> None:
    assert (masking.TOLERANCE, masking.LOSS_TOLERANCE) == (TOL, LOSS_TOL)


@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_cross_iterative_weaker_than_single_step(k: int, flagged: bool) -> None:
    found = cross([attack("fgsm", broken(k)), attack("pgd", base())])
    assert found == (["iterative_weaker_than_single_step"] if flagged else [])


def test_cross_compares_only_attacks_of_the_same_threat_model() -> None:
    assert cross([attack("fgsm", broken(100), eps=0.125), attack("pgd", base(), eps=0.0625)]) == []


@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_cross_black_box_beats_white_box(k: int, flagged: bool) -> None:
    # AutoAttack is not a white-box yardstick here (it contains Square): its mask does not shield the points.
    found = cross([attack("square", broken(k)), attack("pgd", base()), attack("autoattack", broken(k))])
    assert found == (["black_box_beats_white_box"] if flagged else [])


@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_cross_square_inside_autoattack(k: int, flagged: bool) -> None:
    by_square = np.zeros(N, dtype=bool)
    by_square[:k] = True
    found = cross([attack("autoattack", broken(k), masks={"broken_by_square": by_square})])
    assert found == (["black_box_beats_white_box"] if flagged else [])


@pytest.mark.parametrize("strong", ["apgd-t", "cw-linf", "autoattack", "fab-t"])
@pytest.mark.parametrize(("k", "flagged"), [(LOSS_OVER, True), (LOSS_INSIDE, False)])
def test_cross_loss_sensitive(strong: str, k: int, flagged: bool) -> None:
    found = cross([attack("pgd", base()), attack(strong, broken(k), loss="margin")])
    assert found == (["loss_sensitive"] if flagged else [])


def test_cross_loss_sensitive_needs_a_cross_entropy_attack_and_not_a_black_box_yardstick() -> None:
    assert cross([attack("pgd", base(), loss="margin"), attack("apgd-t", broken(100))]) == []
    assert cross([attack("pgd", base()), attack("square", broken(100, start=50))]) == ["black_box_beats_white_box"]


@pytest.mark.parametrize(("k", "flagged"), [(JUST_OVER, True), (JUST_INSIDE, False)])
def test_curve_not_decreasing(k: int, flagged: bool) -> None:
    # Listed out of order: the check sorts by eps. Accuracy at 0.25 is k/400 above that at 0.125 (and at 0.0625).
    curve = [(0.25, base()), (0.0625, broken(k)), (0.125, broken(k))]
    found = cross([], [("pgd curve", curve)])
    assert found == (["curve_not_decreasing"] if flagged else [])


def test_a_falling_curve_is_no_flag() -> None:
    curve = [(0.0625, base()), (0.125, broken(50)), (0.25, broken(150))]
    assert cross([], [("pgd curve", curve)]) == []
