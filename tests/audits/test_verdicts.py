"""A result the run does not support is never a PASS (issue 11, item 5), on real tiny digits models.

- a gradient-masking flag on any audited model fails the verdict, gates or none, unless the suite's
  ``[verdict] gradient_masking = "warn"`` opts out; the verdict line names the model and the check;
- a model with NaN outputs is flagged ``non_finite_outputs`` and every gate on it is "invalid";
- a gate on a metric its probe can never produce is refused when the suite is loaded;
- a transfer gate is untrusted when the SOURCE of the adversarial examples is flagged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from robustdistill import load_model
from robustdistill.audits import audit, load_suite
from robustdistill.cli import main
from robustdistill.errors import UserInputError

EPS = 0.125  # attacks/digits-linf.toml


def suite(gates: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Clean accuracy, FGSM, a transfer pair and the masking checks (trimmed for time) on 60 digits."""
    return {
        "name": "verdicts", "seed": 0, "samples": 60, "data": {"kind": "digits"},
        "threat_model": {"norm": "linf", "eps": EPS},
        "probes": [{"kind": "clean"}, {"kind": "attack", "attack": "fgsm"},
                   {"kind": "transfer", "params": {"steps": 5}},
                   {"kind": "masking", "more_steps": 20, "restarts": 2, "square_queries": 100}],
        "gates": gates, **extra,
    }


@pytest.fixture(scope="module")
def masked_teacher_run(dd_student: Path, digits_pair: tuple[Path, Path],
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path, Path]:
    """A defensively distilled model (masks gradients) as the teacher of a plain KD student; one clean-accuracy gate
    that passes. Later audits of the same --out with --resume change only gates or verdict policy: they rerun no
    probe unit (unit keys do not depend on either)."""
    _, student = digits_pair
    out = tmp_path_factory.mktemp("verdicts") / "run"
    report = audit(suite({"student.clean.accuracy": {"min": 0.5}}), teacher=dd_student, student=student, out=out,
                   progress=False, render=False)
    return report, out, dd_student, student


def test_masking_flag_fails_the_verdict_without_a_robustness_gate(masked_teacher_run: tuple[Any, Path, Path, Path]) -> None:
    report, out, _, _ = masked_teacher_run
    assert report.untrusted == ["teacher"], report.flags  # the precondition: the teacher, only, is flagged
    assert [g["status"] for g in report.gates] == ["passed"]  # every gate passes on its value ...
    assert report.passed is False and report.exit_code == 1  # ... and still the run fails
    checks = sorted({f["check"] for f in report.flags if f["model"] == "teacher"})
    verdict = json.loads((out / "report.json").read_text())["verdict"]
    assert verdict["passed"] is False
    assert [r["kind"] for r in verdict["reasons"]] == ["gradient_masking"]
    # The verdict line names the flag: the model and its checks.
    line = report.summary().splitlines()[-1]
    assert line.startswith("verdict: FAIL") and "gradient masking" in line and "teacher" in line
    assert all(check in line for check in checks), (line, checks)


def test_a_suite_can_opt_out_of_failing_on_masking(masked_teacher_run: tuple[Any, Path, Path, Path]) -> None:
    _, out, teacher, student = masked_teacher_run
    rerun: list[str] = []
    report = audit(suite({"student.clean.accuracy": {"min": 0.5}}, verdict={"gradient_masking": "warn"}),
                   teacher=teacher, student=student, out=out, resume=True, progress=False, render=False,
                   on_unit=lambda r: rerun.append(r["key"]))
    assert rerun == []
    assert report.passed is True and report.exit_code == 0
    assert report.verdict["policy"] == {"gradient_masking": "warn"}
    assert report.verdict["reasons"] == [] and "teacher" in report.verdict["notes"][0]
    assert "warning: gradient masking flagged for teacher" in report.summary()  # still said, just not failing
    with pytest.raises(UserInputError) as info:
        load_suite(suite({}, verdict={"gradient_masking": "ignore"}))
    assert info.value.field == "verdict.gradient_masking"
    with pytest.raises(UserInputError) as info:
        load_suite(suite({}, verdict={"masking": "warn"}))
    assert info.value.field == "verdict.masking" and "gradient_masking" in (info.value.fix or "")


def test_transfer_gate_is_untrusted_when_its_source_is_flagged(masked_teacher_run: tuple[Any, Path, Path, Path]) -> None:
    _, out, teacher, student = masked_teacher_run
    gates = {"student.transfer.transfer_accuracy": {"min": 0.0}, "student.clean.accuracy": {"min": 0.5}}
    report = audit(suite(gates), teacher=teacher, student=student, out=out, resume=True, progress=False, render=False)
    by_metric = {g["metric"]: g for g in report.gates}
    row = next(r for r in report.rows if r["probe"] == "transfer" and r["model"] == "student"
               and r["metric"] == "transfer_accuracy")
    assert row["params"]["source"] == "teacher" and "student" not in report.untrusted
    transfer = by_metric["student.transfer.transfer_accuracy"]
    assert transfer["value"] >= 0.0  # the number alone would pass ...
    assert transfer["status"] == "untrusted" and transfer["passed"] is False and "teacher" in transfer["note"]
    assert by_metric["student.clean.accuracy"]["status"] == "passed"
    assert "gate" in [r["kind"] for r in report.verdict["reasons"]]


def nan_copy(path: Path) -> torch.nn.Module:
    """The checkpoint's model with every weight NaN: it runs, and every logit is NaN."""
    model = copy.deepcopy(load_model(path))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    return model.eval()


def test_nan_model_is_flagged_and_every_gate_on_it_is_invalid(digits_pair: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = digits_pair
    gates = {
        "student.clean.accuracy": {"min": 0.05},            # NaN argmax is class 0: about 10% "accuracy"
        "student.fgsm.success_rate": {"max": 0.5},          # and "0% attack success"
        "teacher.transfer.transfer_accuracy": {"min": 0.0},  # crafted on the NaN student, predicted by the teacher
        "retention.clean": {"min": 0.0},
        "teacher.clean.accuracy": {"min": 0.5},              # the teacher is fine
    }
    spec = suite(gates)
    spec["probes"] = spec["probes"][:3]  # no masking probe: the flag must come from the evaluation itself
    report = audit(spec, teacher=teacher, student=nan_copy(student), out=tmp_path / "run", progress=False)
    flags = [f for f in report.flags if f["kind"] == "non_finite_outputs"]
    assert [f["model"] for f in flags] == ["student"], report.flags  # once, and not the teacher
    assert "NaN or infinite logits on 60 of 60 clean evaluation inputs" in flags[0]["evidence"]
    status = {g["metric"]: g["status"] for g in report.gates}
    assert status == {"student.clean.accuracy": "invalid", "student.fgsm.success_rate": "invalid",
                      "teacher.transfer.transfer_accuracy": "invalid", "retention.clean": "invalid",
                      "teacher.clean.accuracy": "passed"}
    assert not any(g["passed"] for g in report.gates if g["status"] == "invalid")
    assert report.passed is False and report.exit_code == 1
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["flags"] == report.flags
    assert "non_finite_outputs" in [r["kind"] for r in on_disk["verdict"]["reasons"]]
    text = report.summary()
    assert "FLAG student: non_finite_outputs" in text and "non-finite outputs: student" in text.splitlines()[-1]
    for name in ("report.md", "report.html"):  # the flag, its evidence and the invalid gates in both reports
        rendered = (tmp_path / "run" / name).read_text()
        assert "non_finite_outputs" in rendered and flags[0]["evidence"] in rendered
        assert "INVALID" in rendered if name.endswith("html") else "⚠️ invalid" in rendered


GATE_CASES = [
    # (probes, gate, the metrics the message must list, metrics it must not)
    ([{"kind": "attack", "attack": "pgd"}], "student.pgd.median_l2", ["robust_accuracy", "success_rate"], ["median_l2"]),
    ([{"kind": "attack", "attack": "fgsm"}], "student.fgsm.robust_acuracy", ["robust_accuracy"], []),
    ([{"kind": "size"}], "student.size.accuracy", ["parameters", "macs"], []),
    ([{"kind": "masking", "square_queries": 0}], "student.masking.worst_case_robust_accuracy",
     ["pgd_robust_accuracy"], ["worst_case_robust_accuracy"]),
    ([{"kind": "mia-loss", "views": ["own"]}], "student.mia-loss.teacher_members_auc", ["auc"], ["teacher_members_auc"]),
    ([{"kind": "mia-loss"}], "teacher.mia-loss.teacher_members_auc", ["auc"], ["teacher_members_auc"]),
    ([{"kind": "curve", "eps": [0.0, 0.1]}], "student.curve.robust_accuracy", [], []),
]


@pytest.mark.parametrize(("probes", "gate", "listed", "unlisted"), GATE_CASES)
def test_gate_on_a_metric_the_probe_never_produces_is_refused_at_load(probes: list[dict[str, Any]], gate: str,
                                                                      listed: list[str], unlisted: list[str]) -> None:
    spec = suite({gate: {"min": 0.1}})
    spec["probes"] = probes
    with pytest.raises(UserInputError) as info:
        load_suite(spec)
    assert info.value.field == f"gates.{gate!r}"
    fix = info.value.fix or ""
    assert all(metric in fix.split(": ", 1)[1].split(", ") for metric in listed), fix
    assert not any(metric in fix.split(": ", 1)[1].split(", ") for metric in unlisted), fix


def test_gates_on_metrics_the_probe_does_produce_load() -> None:
    spec = suite({"student.pgd-l2.median_l2": {"max": 1.0},
                  "student.autoattack.robust_accuracy_after_apgd_ce": {"min": 0.1},
                  "student.masking.worst_case_robust_accuracy": {"min": 0.1},
                  "student.mia-loss.teacher_members_auc": {"max": 0.6}})
    spec["probes"] = [{"kind": "attack", "name": "pgd-l2", "attack": "pgd", "params": {"norm": "l2", "eps": 1.0}},
                      {"kind": "attack", "attack": "autoattack"}, {"kind": "masking"}, {"kind": "mia-loss"}]
    assert len(load_suite(spec).gates) == 4


def test_cli_refuses_an_impossible_gate_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "suite.toml"
    path.write_text('name = "x"\n[pipeline]\nteacher = "nowhere-t"\nstudent = "nowhere-s"\n[data]\nkind = "digits"\n'
                    '[threat_model]\nnorm = "linf"\neps = 0.1\n[[probes]]\nkind = "attack"\nattack = "fgsm"\n'
                    '[gates]\n"student.fgsm.median_l2" = { max = 1.0 }\n')
    out = tmp_path / "out"
    assert main(["audit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "student.fgsm.median_l2" in err and "never produces" in err and "Traceback" not in err
    assert not out.exists()


def test_an_edited_run_store_fails_the_verdict(digits_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """results.jsonl edited after the run (its hash chain broken, robustdistill.audits.store): `report` must not
    turn the edited numbers into a PASS."""
    teacher, student = digits_pair
    spec = suite({"student.clean.accuracy": {"min": 0.99}})
    spec["probes"] = [{"kind": "clean"}]
    out = tmp_path / "run"
    assert audit(spec, teacher=teacher, student=student, out=out, progress=False, render=False).passed is False
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    edited = []
    for line in lines:  # raise the student's clean accuracy to pass the gate, keeping every line valid JSON
        record = json.loads(line)
        for row in record.get("rows", []):
            if row["model"] == "student":
                row["value"] = 1.0
        edited.append(json.dumps(record) + "\n" if record.get("rows") else line)
    assert edited != lines and len(lines) >= 3  # a unit line followed by another: the chain breaks at the next one
    (out / "results.jsonl").write_text("".join(edited))
    from robustdistill.audits import build_report

    report = build_report(out)
    assert report.manifest["chain"] == "broken"
    assert [g["status"] for g in report.gates] == ["passed"]  # the edit worked on the numbers ...
    assert report.passed is False and report.exit_code == 1  # ... and not on the verdict
    assert [r["kind"] for r in report.verdict["reasons"]] == ["run_store"]
    assert "results.jsonl edited after the run" in report.summary().splitlines()[-1]
