"""results.jsonl is evidence: real tiny audits on digits, then the file is tampered with the way a user or an
attacker could, and `robustdistill report` / `audit --resume` must refuse it (exit 2, one clear line) or say
plainly that it was edited (the verdict is then never PASS). A legitimately resumed run still reports exactly as
an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustdistill.audits import audit, build_report
from robustdistill.cli import main

# The KD student has almost no FGSM robustness at the digits threat model: this gate fails on every honest run,
# so a forged line is what it would take to turn the run's FAIL into a PASS.
GATE = "student.fgsm.robust_accuracy"
SUITE_TOML = """\
name = "store"
seed = 0
samples = 60
[pipeline]
teacher = "{teacher}"
student = "{student}"
[data]
kind = "digits"
[threat_model]
norm = "linf"
eps = 0.125
[[probes]]
kind = "attack"
attack = "fgsm"
[[probes]]
kind = "clean"
[gates]
"student.fgsm.robust_accuracy" = {{ min = 0.9 }}
"""


def sha(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def read_lines(run: Path) -> list[str]:
    return (run / "results.jsonl").read_text().splitlines()


def write_lines(run: Path, lines: list[str]) -> None:
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")


def line_of(lines: list[str], probe: str, role: str) -> int:
    """The index of the unit line of (probe, role)."""
    for index, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") == "unit" and record["probe"] == probe and record["roles"] == [role]:
            return index
    raise AssertionError(f"no unit line for {probe} on {role}")


def passing(record: dict[str, Any]) -> dict[str, Any]:
    """The student's FGSM unit with a robust accuracy that passes the gate."""
    forged = json.loads(json.dumps(record))
    for row in forged["rows"]:
        if row["metric"] == "robust_accuracy":
            row["value"], row["ci95"] = 0.95, [0.9, 0.98]
    return forged


@pytest.fixture(scope="module")
def suite_file(digits_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    teacher, student = digits_pair
    path = tmp_path_factory.mktemp("store-suite") / "store.toml"
    path.write_text(SUITE_TOML.format(teacher=teacher, student=student))
    return path


@pytest.fixture
def failing_run(suite_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A finished audit whose gate honestly fails (exit 1)."""
    out = tmp_path / "run"
    assert main(["audit", str(suite_file), "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert [g["passed"] for g in report["gates"] if g["metric"] == GATE] == [False]
    capsys.readouterr()
    return out


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Run the CLI; assert exit 2 with a short message naming results.jsonl and ``words``, and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert "results.jsonl" in err, err
    for word in words:
        assert word in err, err
    return err


def test_a_forged_duplicate_unit_is_refused_by_report(failing_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(failing_run)
    forged = passing(json.loads(lines[line_of(lines, "fgsm", "student")]))
    forged["prev"] = sha(lines[-1])  # even with the chain carried on correctly
    write_lines(failing_run, [*lines, json.dumps(forged)])
    before = (failing_run / "report.json").read_bytes()
    refused(["report", str(failing_run)], capsys, "again", f"line {len(lines) + 1}")
    assert (failing_run / "report.json").read_bytes() == before  # nothing rewritten


def test_a_forged_duplicate_unit_is_refused_by_resume(failing_run: Path, suite_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(failing_run)
    forged = passing(json.loads(lines[line_of(lines, "fgsm", "student")]))
    forged["prev"] = sha(lines[-1])
    write_lines(failing_run, [*lines, json.dumps(forged)])
    stored = (failing_run / "results.jsonl").read_bytes()
    refused(["audit", str(suite_file), "--out", str(failing_run), "--resume"], capsys, "again")
    assert (failing_run / "results.jsonl").read_bytes() == stored  # no manifest appended, no unit run


def test_a_unit_not_in_the_plan_is_refused(failing_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(failing_run)
    record = json.loads(lines[line_of(lines, "fgsm", "student")])
    record["key"] = record["key"].rsplit(":", 1)[0] + ":" + "f" * 16  # the same probe, another params hash
    record["prev"] = sha(lines[-1])
    write_lines(failing_run, [*lines, json.dumps(record)])
    refused(["report", str(failing_run)], capsys, "not in the plan")


def test_an_edited_line_breaks_the_chain_and_the_verdict(failing_run: Path, suite_file: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(failing_run)
    index = line_of(lines, "fgsm", "student")
    assert 0 < index < len(lines) - 1  # a line in the middle: the next line's hash no longer matches
    lines[index] = json.dumps(passing(json.loads(lines[index])))
    write_lines(failing_run, lines)
    assert main(["report", str(failing_run)]) == 1  # the forged PASS is a FAIL, in the exit code too
    out = capsys.readouterr().out
    assert "results.jsonl was edited after the run" in out and f"line {index + 2}" in out, out
    manifest = json.loads((failing_run / "report.json").read_text())["manifest"]
    assert manifest["chain"] == "broken" and manifest["results_sha256"] == sha(lines[-1])
    # The forged value passes its gate, yet the run does not.
    report = build_report(failing_run)
    assert [g["passed"] for g in report.gates if g["metric"] == GATE] == [True]
    assert not report.passed
    assert "verdict: PASS" not in report.summary()
    # An edited store is not continued either.
    refused(["audit", str(suite_file), "--out", str(failing_run), "--resume"], capsys, "edited after the run")


def test_an_edited_last_line_is_caught_by_the_recorded_hash(failing_run: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(failing_run)
    recorded = json.loads((failing_run / "report.json").read_text())["manifest"]
    assert recorded["chain"] == "intact" and recorded["results_sha256"] == sha(lines[-1])
    last = json.loads(lines[-1])
    last["rows"][0]["value"] = 1.0 if last["rows"][0]["value"] != 1.0 else 0.0
    lines[-1] = json.dumps(last)  # nothing follows the last line: only report.json's hash can see this
    write_lines(failing_run, lines)
    for _ in range(2):  # and a second `report` does not forget it
        main(["report", str(failing_run)])
        assert "results.jsonl was edited after the run" in capsys.readouterr().out
        manifest = json.loads((failing_run / "report.json").read_text())["manifest"]
        assert manifest["chain"] == "broken", manifest
        assert not build_report(failing_run).passed


def test_a_run_without_a_chain_says_so(failing_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """results.jsonl written before the chain existed: reported, not refused, and said plainly."""
    lines = [json.dumps({k: v for k, v in json.loads(line).items() if k != "prev"}) for line in read_lines(failing_run)]
    write_lines(failing_run, lines)
    (failing_run / "report.json").unlink()
    assert main(["report", str(failing_run)]) != 2
    assert "no hash chain" in capsys.readouterr().out
    assert json.loads((failing_run / "report.json").read_text())["manifest"]["chain"] == "absent"


def _append(line: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [*lines, line]


def _edit(probe: str, role: str | None, change: Callable[[dict[str, Any]], None]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        index = 0 if role is None else line_of(lines, probe, role)
        record = json.loads(lines[index])
        change(record)
        return [*lines[:index], json.dumps(record), *lines[index + 1:]]

    return apply


def _set_artifact(path: str) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        record["artifacts"] = [path]

    return change


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (_append("[1, 2, 3]"), ["list, not a record"]),
        (_append('{"type": "summary"}'), ["'summary'"]),
        (_edit("fgsm", "teacher", lambda r: r.pop("rows")), ["rows is missing"]),
        (_edit("clean", "student", lambda r: r["rows"][0].update(value="0.99")), ["rows[0].value"]),
        (_edit("clean", "student", lambda r: r.update(masks={"student": {"correct": "@@"}})), ["base64"]),
        (_edit("clean", "student", lambda r: r["rows"][0].update(model="teacher")), ["row of teacher"]),
        (_edit("manifest", None, lambda r: r.pop("plan")), ["plan is missing"]),
        (lambda lines: [lines[1], lines[0], *lines[2:]], ["before any manifest"]),
        (lambda lines: [*lines, lines[-1].replace('"value": ', '"value": NaN, "was": ', 1)], ["line 6: is not JSON"]),
        (_edit("manifest", None, lambda r: r["gates"][0].update(op=">")), ["gates[0].op"]),
        (_edit("fgsm", "student", _set_artifact("../../etc/passwd")), ["'../../etc/passwd'", "artifacts/"]),
        (_edit("fgsm", "student", _set_artifact("/etc/passwd")), ["'/etc/passwd'", "artifacts/"]),
    ],
    ids=["list", "unknown-type", "unit-without-rows", "string-value", "bad-mask", "row-of-another-model",
         "manifest-without-plan", "unit-first", "nan", "bad-gate", "artifact-dotdot", "artifact-absolute"],
)
def test_a_line_of_the_wrong_shape_exits_2_with_a_clear_message(
    failing_run: Path, capsys: pytest.CaptureFixture[str], tamper: Callable[[list[str]], list[str]], words: list[str]
) -> None:
    write_lines(failing_run, tamper(read_lines(failing_run)))
    before = (failing_run / "report.json").read_bytes()
    refused(["report", str(failing_run)], capsys, *words)
    assert (failing_run / "report.json").read_bytes() == before


def test_an_artifact_linked_outside_the_run_is_refused(failing_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A valid name can still be a symbolic link to a file elsewhere: the run never reads it."""
    _link_outside(failing_run / "artifacts" / "examples-student.npz", tmp_path / "elsewhere.npz")
    assert main(["report", str(failing_run)]) == 2
    err = capsys.readouterr().err
    assert "leads outside" in err and "Traceback" not in err, err


def test_a_resumed_run_reports_exactly_as_an_uninterrupted_one(
    digits_pair: tuple[Path, Path], cheap_suite: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, student = digits_pair
    suite = cheap_suite(teacher, student, samples=60, probes=[{"kind": "attack", "attack": "fgsm"}, {"kind": "clean"}],
                        gates={GATE: {"min": 0.9}})
    whole = audit(suite, out=tmp_path / "whole", progress=False)
    finished: list[str] = []

    def kill_after_two(record: dict[str, Any]) -> None:
        finished.append(record["key"])
        if len(finished) == 2:
            raise KeyboardInterrupt

    for name in ("resumed", "old"):
        finished.clear()
        with pytest.raises(KeyboardInterrupt):
            audit(suite, out=tmp_path / name, progress=False, on_unit=kill_after_two)
    resumed = audit(suite, out=tmp_path / "resumed", resume=True, progress=False)
    lines = read_lines(tmp_path / "resumed")
    assert [json.loads(line)["type"] for line in lines].count("manifest") == 2
    assert resumed.rows == whole.rows and resumed.gates == whole.gates and resumed.flags == whole.flags
    assert resumed.passed == whole.passed is False
    assert resumed.manifest["chain"] == whole.manifest["chain"] == "intact"
    assert resumed.manifest["results_sha256"] == sha(lines[-1])
    # `report` rebuilds the same: the chain runs through both manifests.
    assert main(["report", str(tmp_path / "resumed")]) != 2
    assert "hash chain intact" in capsys.readouterr().out
    assert build_report(tmp_path / "resumed").rows == whole.rows
    with np.load(tmp_path / "resumed" / "artifacts" / "examples.npz") as npz:
        assert {"adv_teacher", "adv_student"} <= set(npz.files)
    # A run killed before the chain existed resumes too; its report says it has no chain.
    write_lines(tmp_path / "old", [json.dumps({k: v for k, v in json.loads(line).items() if k != "prev"})
                                   for line in read_lines(tmp_path / "old")])
    old = audit(suite, out=tmp_path / "old", resume=True, progress=False)
    assert old.rows == whole.rows and old.manifest["chain"] == "absent"


def _link_outside(path: Path, outside: Path) -> None:
    """Move a run's file elsewhere and leave a symbolic link to it in its place."""
    path.rename(outside)
    path.symlink_to(outside)


def test_the_report_reads_no_examples_through_a_link_outside_the_run(failing_run: Path, tmp_path: Path) -> None:
    from robustdistill.reports import render

    _link_outside(failing_run / "artifacts" / "examples.npz", tmp_path / "elsewhere.npz")
    render(failing_run)
    assert "examples.npz leads outside the run directory" in (failing_run / "report.md").read_text()


def test_the_report_reads_no_roc_curve_through_a_link_outside_the_run(digits_pair: tuple[Path, Path], cheap_suite: Any,
                                                                      tmp_path: Path) -> None:
    from robustdistill.reports import render

    teacher, student = digits_pair
    probes = [{"kind": "clean"}, {"kind": "mia-loss", "views": ["own"]}]
    suite = cheap_suite(teacher, student, samples=60, probes=probes, gates={})
    run = tmp_path / "run"
    audit(suite, out=run, progress=False, render=False)
    _link_outside(run / "artifacts" / "roc-mia-loss-student.npz", tmp_path / "elsewhere.npz")
    render(run)
    assert "roc-mia-loss-student.npz leads outside the run directory" in (run / "report.md").read_text()
