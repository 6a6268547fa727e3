"""The key honesty tests: defensive distillation is caught masking gradients, PGD-AT is not falsely accused.

Defensive distillation (Papernot et al. 2016) looks robust to FGSM and cross-entropy PGD because its deployed
logits are ~100x too large and the softmax saturates; Carlini and Wagner (2017) broke it with a margin loss. An
honest audit must say so: flag the model, report its AutoAttack robust accuracy far below its FGSM one, and fail
any gate on its robust accuracy instead of passing it. A genuinely robust (PGD-AT) model must not be flagged.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustdistill.audits import audit
from robustdistill.cli import main

REPO = Path(__file__).resolve().parents[2]
ATTACK_PROBES = ("fgsm", "pgd-20", "cw-linf", "autoattack")


def preset_eps() -> float:
    """The radius of attacks/digits-linf.toml, read from the file itself (not through robustdistill)."""
    return float(tomllib.loads((REPO / "attacks" / "digits-linf.toml").read_text())["threat_model"]["eps"])


def assert_attacks_ran_at_the_presets_eps(run_dir: Path) -> None:
    """Every attack row of report.json names the preset's eps, and the saved adversarial examples lie inside it."""
    eps = preset_eps()
    report = json.loads((run_dir / "report.json").read_text())
    rows = [r for r in report["results"] if r["probe"] in ATTACK_PROBES and r["metric"] == "robust_accuracy"]
    assert {r["probe"] for r in rows} == set(ATTACK_PROBES), rows
    assert all(r["params"]["eps"] == eps and r["params"]["norm"] == "linf" for r in rows), rows
    with np.load(run_dir / "artifacts" / "examples.npz") as npz:
        advs = [npz[key] for key in npz.files if key.startswith("adv_")]
        assert advs, npz.files
        for adv in advs:
            assert float(np.abs(adv - npz["clean"]).max()) <= eps + 1e-6


def honesty_suite(pgd_at: Path, dd: Path, samples: int = 120) -> dict[str, Any]:
    """The digits preset's attacks and checks on a robust (PGD-AT) teacher and a defensively distilled student;
    AutoAttack's Square (which only runs on points the three gradient attacks left robust) and the masking probe's
    Square trimmed for time."""
    return {
        "name": "honesty",
        "seed": 0,
        "samples": samples,
        "pipeline": {"teacher": str(pgd_at), "student": str(dd)},
        "data": {"kind": "digits"},
        "threat_model": {"use": str(REPO / "attacks" / "digits-linf.toml")},
        "probes": [
            {"kind": "clean"},
            {"kind": "attack", "attack": "fgsm"},
            {"kind": "attack", "name": "pgd-20", "attack": "pgd", "params": {"steps": 20}},
            {"kind": "attack", "attack": "cw-linf"},
            {"kind": "attack", "attack": "autoattack", "params": {"n_queries": 1000}},
            {"kind": "masking", "more_steps": 50, "square_queries": 300},
        ],
        "gates": {
            "student.autoattack.robust_accuracy": {"min": 0.0},  # passes on its value; must fail as untrusted
            "student.fgsm.robust_accuracy": {"min": 0.5},
            "student.clean.accuracy": {"min": 0.5},
            "teacher.autoattack.robust_accuracy": {"min": 0.1},
        },
    }


@pytest.fixture(scope="module")
def honesty_report(dd_student: Path, pgd_at_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    run_dir = tmp_path_factory.mktemp("honesty") / "run"
    report = audit(honesty_suite(pgd_at_student, dd_student), out=run_dir, progress=False)
    report.run_dir = run_dir  # for the tests that read the files the audit wrote
    return report


def test_the_suite_runs_the_presets_threat_model(honesty_report: Any) -> None:
    assert_attacks_ran_at_the_presets_eps(honesty_report.run_dir)


def test_defensive_distillation_is_flagged_and_autoattack_sees_through_it(honesty_report: Any) -> None:
    report = honesty_report
    flags = [f for f in report.flags if f["model"] == "student"]
    checks = {f["check"] for f in flags}
    assert checks & {"logit_scale_sensitive", "loss_sensitive"}, report.flags
    assert all(f["kind"] == "gradient_masking" and f["evidence"] for f in flags)
    fgsm = report.value("student", "fgsm", "robust_accuracy")
    auto = report.value("student", "autoattack", "robust_accuracy")
    assert fgsm > 0.5 and auto < fgsm - 0.4, (fgsm, auto)  # measured: fgsm 0.65-0.78, auto 0.08-0.11 (3 seeds x 2 ISAs)
    assert "student" in report.untrusted


def test_gates_on_a_flagged_model_fail_as_untrusted(honesty_report: Any) -> None:
    gates = {g["metric"]: g for g in honesty_report.gates}
    for metric in ("student.autoattack.robust_accuracy", "student.fgsm.robust_accuracy"):
        gate = gates[metric]
        assert gate["value"] >= gate["threshold"]  # the number alone would pass ...
        assert gate["passed"] is False and gate["status"] == "untrusted" and "gradient masking" in gate["note"]
    assert gates["student.clean.accuracy"]["passed"] is True  # clean accuracy is not in doubt
    assert honesty_report.passed is False and honesty_report.exit_code == 1


def test_pgd_at_is_not_flagged(honesty_report: Any) -> None:
    report = honesty_report  # the teacher here is the PGD-AT model
    assert not [f for f in report.flags if f["model"] == "teacher"], report.flags
    assert "teacher" not in report.untrusted
    gate = next(g for g in report.gates if g["metric"] == "teacher.autoattack.robust_accuracy")
    assert gate["passed"] is True and gate["status"] == "passed"
    auto = report.value("teacher", "autoattack", "robust_accuracy")
    assert 0.1 < auto <= report.value("teacher", "pgd-20", "robust_accuracy") <= report.value("teacher", "fgsm", "robust_accuracy")
    # Honest numbers: the masked student's AutoAttack robust accuracy is below the robust teacher's.
    assert report.value("student", "autoattack", "robust_accuracy") < auto


@pytest.mark.slow
def test_digits_suite_end_to_end(dd_student: Path, pgd_at_student: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped audits/digits.toml (AutoAttack standard, whole test split) through the CLI."""
    code = main(["audit", str(REPO / "audits" / "digits.toml"), "--teacher", str(pgd_at_student), "--student",
                 str(dd_student), "--out", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert code == 1 and "UNTRUSTED" in printed and "FLAG student" in printed
    assert "FLAG teacher" not in printed
    assert_attacks_ran_at_the_presets_eps(tmp_path / "run")
