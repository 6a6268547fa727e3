"""The masking flags' evidence, word for word: report.json carries it, so sharing the paired-excess logic
(masking.excess_flag) must not change a character. The expected texts are written out by hand from the masks (400
points; a mask's accuracy and the paired gap computed by hand); the same test passes on 7de6295, before the sharing."""

from __future__ import annotations

from test_masking_checks import attack, base, broken, healthy

from robustdistill.audits import masking


def evidence(flags: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(f["check"], f["evidence"]) for f in flags]


def test_probe_checks_evidence_word_for_word() -> None:
    results, scaled = healthy()  # PGD keeps 200 of 400 points: 50.0%
    results["single_step"] = broken(30)  # 42.5%: PGD 30 points (7.5%) above FGSM
    results["pgd_more_steps"] = broken(40)  # 40.0%
    results["pgd_restarts"] = broken(24)  # 44.0%
    results["cw_loss"] = broken(100)  # 25.0%
    flags = masking.probe_checks("student", results, scaled, 0.05, 0.1, 0.125, 1.0, steps=20, more_steps=100,
                                 restarts=5, loss_tolerance=0.2)
    assert evidence(flags) == [
        ("iterative_weaker_than_single_step",
         "PGD-20 robust accuracy 50.0% is above single-step FGSM's 42.5% at eps=0.125 (+7.5 points, 30 discordant of "
         "400): the gradient misleads the iterative attack"),
        ("more_iterations_keep_lowering",
         "PGD-100 robust accuracy 40.0% is 10.0 points below PGD-20's 50.0% at eps=0.125 (40 discordant of 400): the "
         "attack has not converged, so fixed-budget numbers overstate robustness"),
        ("more_iterations_keep_lowering",
         "PGD-20 x5 restarts robust accuracy 44.0% is 6.0 points below PGD-20's 50.0% at eps=0.125 (24 discordant of "
         "400): the attack has not converged, so fixed-budget numbers overstate robustness"),
        ("loss_sensitive",
         "PGD-20 on the CW margin loss reaches 25.0% robust accuracy, 25.0 points below cross-entropy PGD-20's 50.0% "
         "at eps=0.125 (100 discordant of 400): cross-entropy gradients are masked"),
    ]


def test_cross_checks_evidence_word_for_word() -> None:
    attacks = [attack("fgsm", broken(30)), attack("pgd", base()), attack("apgd-t", broken(100), loss="margin")]
    curves = [("pgd curve", [(0.125, base()), (0.0625, broken(30))])]
    flags = masking.cross_checks("student", attacks, curves)
    assert evidence(flags) == [
        ("iterative_weaker_than_single_step",
         "pgd robust accuracy 50.0% is above fgsm's 42.5% at eps=0.125 (+7.5 points, 30 discordant of 400)"),
        ("loss_sensitive",
         "pgd (cross-entropy gradients) leaves 50.0% robust accuracy, apgd-t (logit-scale-invariant loss) only 25.0% "
         "at eps=0.125 (25.0 points, 100 discordant of 400): cross-entropy gradients are masked"),
        ("curve_not_decreasing",
         "pgd curve: robust accuracy rises from 42.5% at eps=0.0625 to 50.0% at eps=0.125 (+7.5 points); a larger "
         "ball contains the smaller one, so the attack is failing"),
    ]


def test_excess_flag_flags_only_beyond_the_tolerance() -> None:
    def words(points: float, disc: int) -> str:
        return f"{points:.1f} {disc}"

    assert masking.excess_flag("teacher", "c", base(), broken(21), 0.05, words) == [
        {"kind": "gradient_masking", "model": "teacher", "check": "c", "evidence": "5.2 21"}]
    assert masking.excess_flag("teacher", "c", base(), broken(20), 0.05, words) == []
    assert masking.excess_flag("teacher", "c", broken(21), base(), 0.05, words) == []  # the other way round
