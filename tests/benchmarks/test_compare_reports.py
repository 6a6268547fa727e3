"""benchmarks/compare_reports.py's comparison of two report.json documents: exact (one ulp is a difference), rows
matched by identity whatever their order, and every kind of difference named (the audits themselves run only in
the script: minutes each)."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_reports.py"
_spec = importlib.util.spec_from_file_location("compare_reports", SCRIPT)
assert _spec is not None and _spec.loader is not None
compare_reports = importlib.util.module_from_spec(_spec)
sys.modules["compare_reports"] = compare_reports  # its dataclass looks its module up while the class is made
_spec.loader.exec_module(compare_reports)

PGD = {"probe": "pgd-20", "model": "student", "metric": "robust_accuracy", "value": 0.30919220055710306,
       "ci95": [0.26, 0.36], "n": 359, "params": {"eps": 0.125, "steps": 20}}
REPORT: dict[str, Any] = {
    "manifest": {"started": "2026-12-01T02:18:24+00:00"},
    "results": [
        {"probe": "clean", "model": "student", "metric": "accuracy", "value": 0.908, "ci95": [0.87, 0.93], "n": 359,
         "params": {}},
        PGD,
        {**PGD, "params": {"eps": 0.0625, "steps": 20}, "value": 0.6, "ci95": [0.55, 0.65]},  # other params
    ],
    "gates": [{"metric": "student.clean.accuracy", "op": ">=", "threshold": 0.85, "value": 0.908, "passed": True,
               "status": "passed"}],
    "flags": [{"kind": "gradient_masking", "model": "student", "check": "loss_sensitive", "evidence": "25.0 points"}],
    "verdict": {"passed": True, "summary": "PASS (1 gate passed)"},
}


def changed(edit: Any) -> dict[str, Any]:
    report = copy.deepcopy(REPORT)
    edit(report)
    return report


def test_identical_reports_and_reordered_rows_have_no_difference() -> None:
    assert compare_reports.compare(REPORT, copy.deepcopy(REPORT)) == []
    reordered = changed(lambda r: r["results"].reverse())
    assert compare_reports.compare(REPORT, reordered) == []
    # what is not compared (timestamps, the verdict's wording) may differ
    assert compare_reports.compare(REPORT, changed(lambda r: r["manifest"].update(started="later"))) == []


def test_one_ulp_in_a_value_is_a_difference() -> None:
    after = changed(lambda r: r["results"][1].update(value=math.nextafter(PGD["value"], 1.0)))
    [(where, before, now)] = compare_reports.compare(REPORT, after)
    assert where.startswith("results: pgd-20 student robust_accuracy") and '"eps": 0.125' in where
    assert where.endswith(" value") and (before, now) == ("0.30919220055710306", "0.3091922005571031")


def test_missing_rows_interval_gate_flag_and_verdict_changes_are_named() -> None:
    def edit(r: dict[str, Any]) -> None:
        del r["results"][0]
        r["results"][1]["ci95"][1] = 0.37
        r["gates"][0]["passed"] = False
        r["flags"][0]["evidence"] = "26.0 points"
        r["flags"].append({"kind": "gradient_masking", "model": "teacher", "check": "loss_sensitive", "evidence": ""})
        r["verdict"]["passed"] = False

    diffs = compare_reports.compare(REPORT, changed(edit))
    wheres = [where for where, _, _ in diffs]
    assert any(w.startswith("results: clean student accuracy") for w in wheres)
    assert ("results: clean student accuracy {}", "present", "missing") in diffs
    assert any(w.startswith("results: pgd-20") and w.endswith("ci95") for w in wheres)
    assert ("gates: student.clean.accuracy >= passed", "true", "false") in diffs
    assert ("flags: student loss_sensitive evidence", '"25.0 points"', '"26.0 points"') in diffs
    assert ("flags: teacher loss_sensitive", "missing", "present") in diffs
    assert ("verdict.passed", "true", "false") in diffs
    assert len(diffs) == 6


def test_the_table_says_which_suites_are_identical() -> None:
    table = compare_reports.difference_table({"audits/digits.toml": [], "audits/digits-ard.toml": [("x", "1", "2")]})
    assert "| audits/digits.toml | no differences | | |" in table
    assert "| audits/digits-ard.toml | x | 1 | 2 |" in table
