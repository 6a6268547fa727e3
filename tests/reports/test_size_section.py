"""The "Accuracy and robustness against size" section of report.html and report.md, from a run directory written
by hand in the schema the size, clean, attack and masking probes write (a family of students against a teacher).
The real audit behind such a report is tested in tests/audits/test_size_probe.py."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from robustdistill.reports import Report, render
from robustdistill.reports.data import fmt_size, fmt_value
from robustdistill.reports.html import render_html

PNG = "accuracy_vs_size.png"
# role -> (parameters, MACs, clean, fgsm, pgd-20, worst case)
FAMILY = {
    "teacher": (85_130, 412_352, 0.97, 0.61, 0.48, 0.45),
    "student": (9_802, 31_552, 0.93, 0.52, 0.40, 0.37),
    "small": (2_450, 7_904, 0.85, 0.41, 0.30, 0.26),
    "medium": (31_200, 120_000, 0.95, 0.57, 0.44, 0.41),
}
BY_SIZE = ["small", "student", "medium", "teacher"]


def acc(probe: str, role: str, metric: str, value: float, **params: Any) -> dict[str, Any]:
    return {"probe": probe, "model": role, "metric": metric, "value": value, "ci95": [value - 0.03, value + 0.03],
            "n": 300, "params": params}


def write_run(run_dir: Path, *, size: bool = True, masking: bool = True, roles: tuple[str, ...] = tuple(FAMILY),
              flags: list[dict[str, Any]] | None = None, suite: bool = True) -> Path:
    probes: list[dict[str, Any]] = [
        {"kind": "clean", "name": "clean"},
        {"kind": "attack", "name": "fgsm", "attack": "fgsm"},
        {"kind": "attack", "name": "pgd-20", "attack": "pgd", "params": {"steps": 20}},
    ]
    results: list[dict[str, Any]] = []
    for role in roles:
        parameters, macs, clean, fgsm, pgd, worst = FAMILY[role]
        results.append(acc("clean", role, "accuracy", clean))
        results.append(acc("fgsm", role, "robust_accuracy", fgsm, attack="fgsm", eps=0.125, norm="linf"))
        results.append(acc("pgd-20", role, "robust_accuracy", pgd, attack="pgd", eps=0.125, norm="linf", steps=20,
                           name="pgd-20"))
        if masking:
            results.append(acc("masking", role, "worst_case_robust_accuracy", worst, eps=0.125))
        if size:
            results.append({"probe": "size", "model": role, "metric": "parameters", "value": float(parameters),
                            "ci95": None, "n": None, "params": {}})
            results.append({"probe": "size", "model": role, "metric": "macs", "value": float(macs), "ci95": None,
                            "n": None, "params": {"input_shape": [1, 8, 8]}})
    probes += [{"kind": "masking", "name": "masking"}] if masking else []
    probes += [{"kind": "size", "name": "size"}] if size else []
    report = {
        "suite": {"name": "family", "threat_model": {"norm": "linf", "eps": 0.125}, "probes": probes},
        "manifest": {"robustdistill": "0.0.0", "seed": 0,
                     "checkpoints": {role: {"path": f"checkpoints/{role}", "sha256": "0" * 64} for role in roles}},
        "results": results,
        "gates": [{"metric": "small.size.parameters", "op": "<=", "threshold": 5000.0, "value": 2450.0,
                   "passed": True}] if size else [],
        "flags": flags or [],
    }
    if not suite:
        del report["suite"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return run_dir


def section(html: str) -> str:
    match = re.search(r'<section id="size">.*?</section>', html, re.DOTALL)
    assert match, "no size section"
    return match.group(0)


def md_section(md: str) -> str:
    match = re.search(r"## Accuracy and robustness against size\n.*?(?=\n## )", md, re.DOTALL)
    assert match, "no size section in report.md"
    return match.group(0)


def test_size_section_in_html_and_markdown(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    written = render(run_dir)
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    size = section(html)

    # After the image-attacks sections (teacher vs student, then its plots), before the flags; in the navigation.
    assert "<h2>Accuracy and robustness against size</h2>" in size
    assert '<a href="#size">' in html
    assert html.index('<section id="comparison">') < html.index('<section id="curves">') < html.index(
        '<section id="size">') < html.index('<section id="flags">')
    # The models from smallest to largest, each with its size, clean accuracy and each attack's robust accuracy.
    roles = re.findall(r"<tr><td>([a-z]+)</td>", size)
    assert roles == BY_SIZE
    for header in ("Parameters", "MACs", "Clean accuracy", "Robust accuracy", ">fgsm<", ">pgd-20<"):
        assert header in size, header
    assert size.index(">fgsm<") < size.index(">pgd-20<")
    # The masking probe's worst case covers only its own attacks (AutoAttack can be lower): never shown as one here.
    assert "worst case" not in size.lower()
    assert 'title="85,130 parameters">85.1 k</span>' in size and 'title="7,904 MACs">7.9 k</span>' in size
    small = re.search(r"<tr><td>small</td>.*?</tr>", size).group(0)
    for value, interval in (("85.0%", "[82.0, 88.0]"), ("41.0%", "[38.0, 44.0]"), ("30.0%", "[27.0, 33.0]")):
        assert f'{value} <span class="ci">{interval}</span>' in small, value
    assert "L∞, ε = 0.125" in size and "of shape 1 × 8 × 8" in size
    # The plot: one embedded PNG (also written for report.md).
    images = re.findall(r'<img alt="Clean and robust accuracy against the number of parameters[^"]*" '
                        r'src="data:image/png;base64,([^"]+)"', size)
    assert len(images) == 1
    image = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert image.size[0] > 600 and image.size[1] > 400
    assert run_dir / "plots" / PNG in written and (run_dir / "plots" / PNG).is_file()

    text = md_section(md)
    assert "| model | parameters | MACs | clean | robust: fgsm | robust: pgd-20 |" in text
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines] == BY_SIZE
    assert lines[0] == "| small | 2.45 k | 7.9 k | 85.0% [82.0, 88.0] | 41.0% [38.0, 44.0] | 30.0% [27.0, 33.0] |"
    assert f"![Accuracy and robustness against size](plots/{PNG})" in text
    assert md.count(f"plots/{PNG}") == 1  # in its section, not again under Plots
    assert md.index("## Teacher vs student") < md.index("## Accuracy and robustness against size") < md.index(
        "## Flags")
    # Counts read as whole numbers elsewhere too (gates, all results).
    assert "| `small.size.parameters` | <= | 5,000 | 2,450 | ✅ pass |" in md
    assert "| size | size | teacher | parameters | 85,130 |" in md


def test_untrusted_robust_accuracy_is_marked(tmp_path: Path) -> None:
    flag = {"kind": "gradient_masking", "model": "medium", "check": "large_eps", "evidence": "robust at eps 0.5"}
    run_dir = write_run(tmp_path / "run", flags=[flag])
    size = section(render_html(Report.load(run_dir / "report.json"), {}))
    medium = re.search(r"<tr><td>medium</td>.*?</tr>", size).group(0)
    student = re.search(r"<tr><td>student</td>.*?</tr>", size).group(0)
    assert medium.count('class="untrusted"') == 2  # fgsm, pgd-20; not clean accuracy
    assert 'class="untrusted"' not in student


def test_without_masking_and_without_suite_still_found(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", masking=False, suite=False)
    size = section(render_html(Report.load(run_dir / "report.json"), {}))
    assert "No plot of accuracy against size." in size
    assert ">pgd-20<" in size
    assert re.findall(r"<tr><td>([a-z]+)</td>", size) == BY_SIZE


def test_clean_only_suite(tmp_path: Path) -> None:
    """Size and clean accuracy only: no robust columns, no threat model, no attack plots."""
    run_dir = write_run(tmp_path / "run", masking=False)
    raw = json.loads((run_dir / "report.json").read_text())
    raw["results"] = [r for r in raw["results"] if r["metric"] != "robust_accuracy"]
    raw["suite"]["probes"] = [p for p in raw["suite"]["probes"] if p["kind"] in ("clean", "size")]
    (run_dir / "report.json").write_text(json.dumps(raw))
    render(run_dir)
    html = (run_dir / "report.html").read_text()
    size = section(html)
    assert "Clean accuracy" in size and "Robust accuracy" not in size and "ε" not in size
    assert '<section id="curves">' not in html
    assert (run_dir / "plots" / PNG).is_file()


@pytest.mark.parametrize("case", ["no size probe", "one sized model"])
def test_no_section_without_two_sized_models(tmp_path: Path, case: str) -> None:
    run_dir = write_run(tmp_path / "run")
    render(run_dir)
    assert (run_dir / "plots" / PNG).is_file()
    if case == "no size probe":
        write_run(run_dir, size=False)
    else:
        raw = json.loads((run_dir / "report.json").read_text())
        raw["results"] = [r for r in raw["results"] if r["probe"] != "size" or r["model"] == "teacher"]
        (run_dir / "report.json").write_text(json.dumps(raw))
    written = render(run_dir)
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    assert 'id="size"' not in html and "against size" not in html and "against size" not in md
    assert Report.load(run_dir / "report.json").size() is None
    assert PNG not in {p.name for p in written}
    assert not (run_dir / "plots" / PNG).exists()  # the earlier render's plot is gone


def test_formatting_of_counts() -> None:
    assert [fmt_size(v) for v in (0, 512, 2450, 9802, 85_130, 999_999, 11_173_962, 2.5e9)] == [
        "0", "512", "2.45 k", "9.8 k", "85.1 k", "1 M", "11.2 M", "2.5 G"]
    assert fmt_size(None) == "—"
    assert fmt_value(85130.0, "student.size.parameters") == "85,130"
    assert fmt_value(0.5, "macs") == "0.500"  # not a whole count: as any number
