"""`robustdistill audit` and `robustdistill report` through cli.main(): exit codes 0 / 1 / 2, nothing half-written."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from robustdistill.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_suite(path: Path, suite: dict[str, Any]) -> Path:
    """A dict as TOML (the subset the suites use: scalars, lists, inline tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {value(v)}" for k, v in suite.items() if not isinstance(v, (dict, list))]
    for key in ("pipeline", "data", "threat_model"):
        if key in suite:
            lines.append(f"[{key}]")
            lines += [f"{json.dumps(k)} = {value(v)}" for k, v in suite[key].items()]
    for probe in suite.get("probes", []):
        lines.append("[[probes]]")
        lines += [f"{k} = {value(v)}" for k, v in probe.items()]
    if suite.get("gates"):
        lines.append("[gates]")
        lines += [f"{json.dumps(k)} = {value(v)}" for k, v in suite["gates"].items()]
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text())["name"] == suite["name"]
    return path


@pytest.fixture
def small(cheap_suite: Any) -> Any:
    def build(teacher: Path, student: Path, gates: dict[str, Any]) -> dict[str, Any]:
        suite = cheap_suite(teacher, student, samples=60, gates=gates)
        suite["probes"] = [{"kind": "clean"}, {"kind": "attack", "attack": "fgsm"},
                           {"kind": "attack", "name": "pgd-5", "attack": "pgd", "params": {"steps": 5}}]
        return suite

    return build


def test_gates_pass_exit_0_and_fail_exit_1(digits_pair: tuple[Path, Path], small: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = digits_pair
    passing = write_suite(tmp_path / "pass.toml", small(teacher, student, {"student.clean.accuracy": {"min": 0.5},
                                                                           "retention.pgd-5": {"min": 0.0}}))
    assert main(["audit", str(passing), "--out", str(tmp_path / "pass")]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "teacher" in out and "student" in out and "pgd-5 robust accuracy" in out
    failing = write_suite(tmp_path / "fail.toml", small(teacher, student, {"student.pgd-5.robust_accuracy": {"min": 0.99}}))
    assert main(["audit", str(failing), "--out", str(tmp_path / "fail")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "verdict: FAIL" in out
    report = json.loads((tmp_path / "fail" / "report.json").read_text())
    assert report["gates"][0]["passed"] is False and report["gates"][0]["op"] == ">="
    # `report` rebuilds report.json from results.jsonl with the same results.
    before = report["results"]
    (tmp_path / "fail" / "report.json").unlink()
    assert main(["report", str(tmp_path / "fail")]) == 1  # the audit's verdict, and exit code, again
    assert json.loads((tmp_path / "fail" / "report.json").read_text())["results"] == before


def test_cli_overrides_and_default_out(digits_pair: tuple[Path, Path], small: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, student = digits_pair
    suite = small(Path("nowhere/t"), Path("nowhere/s"), {})
    suite["name"] = "overrides"
    path = write_suite(tmp_path / "s.toml", suite)
    monkeypatch.chdir(tmp_path)
    code = main(["audit", str(path), "--teacher", str(teacher), "--student", str(student), "--samples", "30",
                 "--device", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "runs" / "overrides" / "report.json").read_text())
    assert report["manifest"]["checkpoints"]["student"]["path"] == str(student)
    assert report["suite"]["samples"] == 30 and {r["n"] for r in report["results"] if r["metric"] == "accuracy"} == {30}
    # A second run into the same directory is refused (exit 2) and leaves the first run's results alone.
    before = (tmp_path / "runs" / "overrides" / "results.jsonl").read_bytes()
    assert main(["audit", str(path), "--teacher", str(teacher), "--student", str(student)]) == 2
    assert (tmp_path / "runs" / "overrides" / "results.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["pipeline"].update(student="no/such/checkpoint"), "pipeline.student"),
        (lambda s: s["pipeline"].pop("teacher"), "pipeline.teacher"),
        (lambda s: s["probes"].append({"kind": "fuzz"}), "probes[3].kind"),
        (lambda s: s["probes"].append({"kind": "attack", "attack": "pgd", "params": {"steps": -1}}), "probes[3].params.steps"),
        (lambda s: s.update(gates={"student.pgd-5": {"min": 0.5}}), "gates.'student.pgd-5'"),
        (lambda s: s.update(gates={"student.pgd-5.robust_accuracy": {"above": 0.5}}), "gates.'student.pgd-5.robust_accuracy'.above"),
        (lambda s: s["data"].update(kind="cifar10", root="no/such/folder"), "data.root"),
        (lambda s: s.update(sample=5), "sample"),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(
    digits_pair: tuple[Path, Path], small: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any,
    field: str,
) -> None:
    teacher, student = digits_pair
    suite = small(teacher, student, {})
    mutate(suite)
    path = write_suite(tmp_path / "bad.toml", suite)
    out = tmp_path / "run"
    assert main(["audit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {field}" in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_malformed_toml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = 'x'\n[pipeline\n")
    assert main(["audit", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["audit", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_report_of_a_directory_without_results_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "results.jsonl" in capsys.readouterr().err


def test_shipped_suite_with_missing_default_checkpoints_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # The suite and its preset copied where no checkpoints/ folder is near (the repository may have one).
    (tmp_path / "audits").mkdir()
    (tmp_path / "attacks").mkdir()
    (tmp_path / "audits" / "digits.toml").write_text((REPO / "audits" / "digits.toml").read_text())
    (tmp_path / "attacks" / "digits-linf.toml").write_text((REPO / "attacks" / "digits-linf.toml").read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "audits/digits.toml", "--out", str(tmp_path / "run")]) == 2
    assert "pipeline.teacher" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
