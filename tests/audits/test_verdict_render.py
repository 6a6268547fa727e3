"""One verdict everywhere (issue 11, item 4): the CLI's summary, the exit code, report.json, report.md, report.html
and the index page show the verdict the runner decided once, on real runs of tiny digits models.

Before, the renderers re-derived it from the gates alone: an incomplete run, or one with a model flagged for
gradient masking, rendered PASS while the CLI said FAIL and exited 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest

from robustdistill.audits import audit
from robustdistill.cli import main
from robustdistill.reports import render
from robustdistill.reports.render import index_entry, render_index

EPS = 0.125  # attacks/digits-linf.toml
SUITE = f"""name = "one-verdict"
seed = 0
samples = 60
[data]
kind = "digits"
[threat_model]
norm = "linf"
eps = {EPS}
[[probes]]
kind = "clean"
[[probes]]
kind = "attack"
attack = "fgsm"
[[probes]]
kind = "masking"
more_steps = 20
restarts = 2
square_queries = 100
[gates]
"student.clean.accuracy" = {{ min = 0.5 }}
"""


def verdicts(run: Path) -> tuple[str, str, str]:
    """(report.json's PASS/FAIL, report.md's, report.html's)."""
    stored = json.loads((run / "report.json").read_text())["verdict"]
    md = (run / "report.md").read_text()
    html = (run / "report.html").read_text()
    md_word = next(line for line in md.splitlines() if line.startswith("**Verdict: ")).split("**")[1].split()[-1]
    html_word = html.split('<div class="word">', 1)[1].split("</div>", 1)[0]
    return ("PASS" if stored["passed"] else "FAIL"), md_word, html_word


@pytest.fixture(scope="module")
def masked_cli_run(digits_pair: tuple[Path, Path], dd_student: Path, tmp_path_factory: pytest.TempPathFactory,
                   ) -> tuple[int, str, Path]:
    """`robustdistill audit` of a defensively distilled student (flagged for masking) whose only gate passes."""
    teacher, _ = digits_pair
    root = tmp_path_factory.mktemp("one-verdict")
    (root / "suite.toml").write_text(SUITE)
    out = root / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["audit", str(root / "suite.toml"), "--teacher", str(teacher), "--student", str(dd_student),
                     "--out", str(out)])
    return code, stdout.getvalue(), out


def test_cli_exit_code_and_every_report_give_one_verdict(masked_cli_run: tuple[int, str, Path]) -> None:
    code, stdout, out = masked_cli_run
    raw = json.loads((out / "report.json").read_text())
    assert [g["status"] for g in raw["gates"]] == ["passed"]  # the gate alone would pass the run ...
    assert code == 1  # ... but the student is flagged for gradient masking
    assert next(line for line in stdout.splitlines() if line.startswith("verdict: ")).startswith("verdict: FAIL")
    assert verdicts(out) == ("FAIL", "FAIL", "FAIL")
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert raw["verdict"]["reasons"], raw["verdict"]  # the flag is named as the reason, not only implied
    for reason in raw["verdict"]["reasons"]:
        assert reason["kind"] == "gradient_masking" and "student" in reason["text"]
        assert reason["text"] in md
        assert html_escape(reason["text"]) in html
    # The demo's index page reads the same verdict.
    entry = index_entry(out, out.parent)
    assert entry["passed"] is False
    index = render_index([entry], out.parent / "index.html", "verdicts").read_text()
    assert '<span class="pill fail">FAIL</span>' in index and '<span class="pill pass">' not in index
    # `robustdistill report` rebuilds and renders the same verdict.
    assert main(["report", str(out)]) == 1
    assert verdicts(out) == ("FAIL", "FAIL", "FAIL")


def test_an_incomplete_run_renders_fail(digits_pair: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = digits_pair
    spec = {"name": "killed", "seed": 0, "samples": 60, "data": {"kind": "digits"},
            "threat_model": {"norm": "linf", "eps": EPS},
            "probes": [{"kind": "clean"}, {"kind": "attack", "attack": "fgsm"}],
            "gates": {"student.clean.accuracy": {"min": 0.5}}}
    finished: list[str] = []

    def kill_after_the_clean_units(record: dict[str, Any]) -> None:
        finished.append(record["key"])
        if len(finished) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        audit(spec, teacher=teacher, student=student, out=out, progress=False, on_unit=kill_after_the_clean_units)
    assert main(["report", str(out)]) == 1  # FAIL on stdout, in the files and in the exit code
    stdout = capsys.readouterr().out
    raw = json.loads((out / "report.json").read_text())
    assert [g["status"] for g in raw["gates"]] == ["passed"]  # the gated unit finished ...
    assert "verdict: FAIL (incomplete: 2 probe units did not finish)" in stdout  # ... the run did not
    assert verdicts(out) == ("FAIL", "FAIL", "FAIL")
    assert "did not finish" in (out / "report.md").read_text() and "did not finish" in (out / "report.html").read_text()


def test_an_older_report_json_without_a_verdict_still_renders(masked_cli_run: tuple[int, str, Path],
                                                              tmp_path: Path) -> None:
    """Files written before verdicts were stored: the gates decide, the old way, and the report says so."""
    _, _, out = masked_cli_run
    old = json.loads((out / "report.json").read_text())
    del old["verdict"]
    for gate in old["gates"]:
        del gate["status"]
    run = tmp_path / "old"
    shutil.copytree(out / "artifacts", run / "artifacts")
    (run / "report.json").write_text(json.dumps(old))
    render(run)
    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "**Verdict: PASS**" in md and '<div class="word">PASS</div>' in html
    assert "predates stored verdicts" in md and "predates stored verdicts" in html
    assert "Robust accuracy of student not to be trusted" in html  # the masking warning is still shown
