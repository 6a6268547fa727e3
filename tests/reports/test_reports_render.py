"""render(): report.md, a self-contained report.html and plots from a real audited run (tiny digits models)."""

from __future__ import annotations

import base64
import io
from html import escape as html_escape
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustdistill.errors import UserInputError
from robustdistill.reports import Report, render
from robustdistill.reports import plots as plotting
from robustdistill.reports.data import fmt_ci, fmt_value

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def run_dir(audited_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(audited_run, target)
    return target


def read_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def write_report(run_dir: Path, report: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report))


def assert_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower() and "url(" not in html
    sources = re.findall(r"""src\s*=\s*["']([^"']*)["']""", html)
    assert all(src.startswith("data:image/png;base64,") for src in sources), sources
    for src in sources:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        Image.open(io.BytesIO(png)).verify()


def test_render_real_run(run_dir: Path) -> None:
    written = render(run_dir)
    raw = read_report(run_dir)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    assert written[:2] == [md_path, html_path]
    plots = {p.name for p in written[2:]}
    assert plots == {"robustness_curve.png", "accuracy_per_attack.png", "examples.png"}
    for path in written:
        assert path.is_file() and path.stat().st_size > 0
    for name in plots:
        assert (run_dir / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    assert not list(run_dir.rglob("*.tmp")), "temporary files left behind"

    html = html_path.read_text()
    md = md_path.read_text()
    assert_self_contained(html)
    assert html.count("data:image/png;base64,") == 3

    # The verdict, as the runner decided it in report.json.
    verdict = "PASS" if raw["verdict"]["passed"] else "FAIL"
    assert f'<div class="word">{verdict}</div>' in html
    assert f"**Verdict: {verdict}**" in md
    # The sections in the order people read them: verdict and gates first, the manifest last.
    order = ["summary", "comparison", "curves", "attacks", "examples", "flags", "results", "manifest"]
    positions = [html.index(f'<section id="{anchor}">') for anchor in order]
    assert positions == sorted(positions)
    assert positions[0] < html.index('<div class="verdict') < html.index("<h3>Gates</h3>") < positions[1]
    for gate in raw["gates"]:
        assert gate["metric"] in html and gate["metric"] in md
    assert raw["flags"], "the defensively distilled student is flagged by the real masking probe"
    for flag in raw["flags"]:
        assert html_escape(flag["evidence"]) in html and flag["evidence"] in md
        if flag["kind"] == "gradient_masking":
            assert f"Robust accuracy of {flag['model']} not to be trusted" in html
    for role, checkpoint in raw["manifest"]["checkpoints"].items():
        assert role in html and role in md
        assert checkpoint["sha256"][:12] in html and checkpoint["sha256"][:12] in md
    for row in raw["results"]:
        assert row["model"] in html
    # Numbers as people read them: the student's clean accuracy as a percentage with a CI.
    clean = next(r for r in raw["results"] if r["probe"] == "clean" and r["model"] == "student")
    text = fmt_ci(clean["value"], tuple(clean["ci95"]), "accuracy")  # "41.7% [33.2, 50.6]"
    assert text in md
    value, interval = text.split(" ", 1)
    assert f'{value} <span class="ci">{interval}</span>' in html
    # report.md links the plots it describes, relative to the run directory.
    for name in plots:
        assert f"(plots/{name})" in md


def test_masking_flag_gives_the_warning(run_dir: Path) -> None:
    """The real run's flag on the defensively distilled student: the warning, UNTRUSTED on the gates that its number
    alone would pass, and the evidence escaped. The one change to the runner's output is a flag's evidence text with
    HTML in it, which no real check writes."""
    raw = read_report(run_dir)
    flags = [f for f in raw["flags"] if f["model"] == "student" and f["kind"] == "gradient_masking"]
    assert flags, raw["flags"]
    hostile = "PGD robust accuracy 0.80 > FGSM 0.40 & <more>"
    flags[0]["evidence"] = hostile
    write_report(run_dir, raw)
    render(run_dir)
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    assert "Robust accuracy of student not to be trusted" in html
    untrusted = [g for g in raw["gates"] if g["metric"].startswith("student.") and g.get("status") == "untrusted"]
    assert untrusted and "UNTRUSTED" in html  # the runner's untrusted gates are shown as such
    assert "PGD robust accuracy 0.80 &gt; FGSM 0.40 &amp; &lt;more&gt;" in html  # escaped, not injected
    assert hostile not in html
    verdict_line = next(line for line in md.splitlines() if line.startswith("**Verdict"))
    assert raw["verdict"]["passed"] is False, raw["verdict"]  # a model flagged for gradient masking never passes
    assert verdict_line.split("**")[1].split()[-1] == "FAIL", verdict_line


def test_render_is_atomic_when_a_plot_fails(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render(run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("report.html", "report.md")}
    raw = read_report(run_dir)
    raw["gates"].append(
        {"metric": "student.clean.accuracy", "op": ">=", "threshold": 0.0, "value": 1.0, "passed": True}
    )
    write_report(run_dir, raw)

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("plot failed midway")

    monkeypatch.setattr(plotting, "examples_grid", broken)
    with pytest.raises(RuntimeError, match="plot failed midway"):
        render(run_dir)
    for name, content in before.items():
        assert (run_dir / name).read_bytes() == content
    assert not list(run_dir.rglob("*.tmp"))


def test_unknown_and_malformed_rows_do_not_crash(tmp_path: Path) -> None:
    report = {
        "suite": {"name": "odd | suite <b>", "threat_model": "not a table"},
        "manifest": {"checkpoints": {"student": "only/a/path", "ensemble": {"sha256": None}}, "extra": [1, 2]},
        "results": [
            42,
            None,
            "row",
            {},
            {
                "probe": "membership",
                "model": "student",
                "metric": "auc",
                "value": 0.71,
                "ci95": [0.6, 0.8],
                "n": "12",
                "params": {"nested": {"a": [1, 2.5]}},
            },
            {
                "probe": "attack",
                "model": "ensemble",
                "metric": "robust_accuracy",
                "value": "nan",
                "ci95": "bad",
                "params": ["x"],
            },
            {
                "probe": "attack",
                "model": "student",
                "metric": "robust_accuracy",
                "value": "0.5",
                "ci95": [0.6, 0.4],
                "params": {"attack": "pgd", "name": "pgd-cw"},
            },
            {"probe": "curve", "model": "student", "metric": "robust_accuracy", "value": 0.3, "params": {"eps": "0.1"}},
            {
                "probe": "curve",
                "model": "student",
                "metric": "robust_accuracy",
                "value": 0.2,
                "params": {"eps": [1, 2]},
            },
            {"probe": "curve", "model": "student", "metric": "robust_accuracy", "value": None, "params": {"eps": 0.3}},
            {"probe": "clean", "model": "teacher", "metric": "accuracy", "value": 0, "ci95": None},
            {"probe": "transfer", "model": "student", "metric": "transfer_accuracy", "value": 0.4, "params": {}},
            {"probe": "agreement", "model": "student", "metric": "agreement_clean", "value": True},
        ],
        "gates": [
            {"metric": "x.y", "op": "~", "threshold": "a"},
            "weird",
            {"metric": "student.pgd.robust_accuracy", "op": ">=", "threshold": 0.4, "value": 0.5},
        ],
        "flags": [
            "a bare string",
            {"kind": "gradient_masking", "model": "student", "evidence": {"fgsm": 0.3}, "extra": 1},
        ],
    }
    write_report(tmp_path, report)
    written = render(tmp_path)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    assert_self_contained(html)
    for text in ("membership", "auc", "pgd-cw", "ensemble", "a bare string", "only/a/path"):
        assert text in html and text in md
    assert "odd | suite &lt;b&gt;" in html and "<b>" not in html.split("<main>")[1].split("</header>")[0]
    # Undecidable gates never let a run pass.
    assert '<div class="word">UNDECIDED</div>' in html
    assert {p.name for p in written[2:]} == {"robustness_curve.png", "accuracy_per_attack.png"}


def test_empty_report_renders(tmp_path: Path) -> None:
    write_report(tmp_path, {})
    written = render(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert '<div class="word">NO GATES</div>' in html
    assert written == [tmp_path / "report.md", tmp_path / "report.html"]


def test_missing_plot_data_removes_stale_plots_and_notes_examples(run_dir: Path) -> None:
    render(run_dir)
    assert (run_dir / "plots" / "examples.png").exists()
    np.savez(run_dir / "artifacts" / "examples.npz", clean=np.zeros((3, 5), np.float32))  # not (K, C, H, W)
    raw = read_report(run_dir)
    raw["results"] = [r for r in raw["results"] if r["probe"] != "curve"]
    write_report(run_dir, raw)
    written = render(run_dir)
    assert {p.name for p in written[2:]} == {"accuracy_per_attack.png"}
    assert not (run_dir / "plots" / "examples.png").exists()
    assert not (run_dir / "plots" / "robustness_curve.png").exists()
    html = (run_dir / "report.html").read_text()
    assert "No examples: artifacts/examples.npz" in html
    assert "no robustness-curve rows" in html


def test_bad_report_json_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no report.json"):
        render(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(UserInputError, match="report.json"):
        render(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(UserInputError, match="not an object"):
        render(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_teacher_vs_student_table_from_real_rows(audited_run: Path) -> None:
    report = Report.load(audited_run / "report.json")
    roles, entries = report.comparison()
    assert roles == ["teacher", "student"]
    titles = [e.title() for e in entries]
    assert titles[0] == "Clean accuracy"
    assert {"Robust accuracy · fgsm", "Robust accuracy · pgd"} <= set(titles)
    pgd = next(e for e in entries if e.title() == "Robust accuracy · pgd")
    # The table's retention is the runner's retention row, not a number recomputed here.
    runner = next(r for r in read_report(audited_run)["results"]
                  if r["metric"] == "robust_accuracy_retention" and r["params"].get("of") == "pgd")
    assert pgd.retention() == pytest.approx(runner["value"])


@pytest.mark.parametrize(
    ("value", "metric", "text"),
    [
        (0.6123, "robust_accuracy", "61.2%"),
        (0.84251, "median_l2", "0.843"),
        (None, "accuracy", "—"),
        (1.0, "student.pgd.success_rate", "100.0%"),
        (float("nan"), "accuracy", "—"),
    ],
)
def test_number_formats(value: float | None, metric: str, text: str) -> None:
    assert fmt_value(value, metric) == text


def test_ci_format() -> None:
    # The interval itself, not "± half-width": Wilson intervals are asymmetric (issue 12: "100.0 ± 15.0%").
    assert fmt_ci(0.61, (0.57, 0.65), "robust_accuracy") == "61.0% [57.0, 65.0]"
    assert fmt_ci(1.0, (0.85, 1.0), "accuracy") == "100.0% [85.0, 100]"
    assert fmt_ci(0.0, (0.0, 0.071347), "robust_accuracy") == "0.0% [0, 7.1]"
    assert fmt_ci(0.8, (0.7, 0.9), "median_l2") == "0.800 [0.700, 0.900]"
    assert fmt_ci(0.8, None, "accuracy") == "80.0%"


def test_examples_grid_accepts_rgb_channels_last(run_dir: Path) -> None:
    """A CIFAR-like (K, H, W, 3) array and missing predictions for one role still give a grid."""
    with np.load(run_dir / "artifacts" / "examples.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    rgb = lambda a: np.repeat(np.repeat(np.repeat(a, 4, axis=2), 4, axis=3), 3, axis=1).transpose(0, 2, 3, 1)
    arrays["clean"] = rgb(arrays["clean"])
    for role in ("teacher", "student"):
        arrays[f"adv_{role}"] = rgb(arrays[f"adv_{role}"])
    del arrays["pred_adv_teacher"], arrays["pred_clean_teacher"]
    arrays["classes"] = np.array([f"class-{i}" for i in range(10)])
    np.savez(run_dir / "artifacts" / "examples.npz", **arrays)
    written = render(run_dir)
    assert run_dir / "plots" / "examples.png" in written
    width, height = Image.open(run_dir / "plots" / "examples.png").size
    assert width > height > 300
