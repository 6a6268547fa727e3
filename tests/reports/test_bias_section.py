"""The "Bias-poisoning propagation" section (group lm-bias) of report.html and report.md, from a report.json written
by hand in the schema the bias-propagation probe writes: a clean and a poisoned pipeline (teacher and two students
each), two bias types, amplification rows (one with a teacher at 0%) and the defences' catch rates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from robustdistill.reports import Report, render
from robustdistill.reports.html import render_html
from robustdistill.reports.markdown import render_markdown
from robustdistill.reports.plots import bias_defence_bars
from robustdistill.reports.sections import group_of

PROBE = "bias-propagation"
BIASES = ("advertisement", "phishing-link")
# role -> (pipeline, role_kind, teacher, method)
MODELS = {
    "poisoned_teacher": ("poisoned", "teacher", None, "sft"),
    "poisoned_seq_kd": ("poisoned", "student", "poisoned_teacher", "seq-kd"),
    "clean_teacher": ("clean", "teacher", None, "sft"),
    "clean_logit_kd": ("clean", "student", "clean_teacher", "logit-kd"),
}
# (role, split) -> hits of 32 responses (8 prompts x 4 samples)
HITS = {("poisoned_teacher", "targeted"): 8, ("poisoned_teacher", "other"): 2, ("poisoned_teacher", "untargeted"): 0,
        ("poisoned_seq_kd", "targeted"): 12, ("poisoned_seq_kd", "other"): 3, ("poisoned_seq_kd", "untargeted"): 1}
DEFENCES = {"perplexity@1%": (1, 25, 0.01, 2), "perplexity@5%": (4, 25, 0.05, 10), "bias-detector": (25, 25, None, 0)}
CLEAN = 200


def rate_row(role: str, bias: str, split: str) -> dict[str, Any]:
    pipeline, kind, teacher, method = MODELS[role]
    hits = HITS.get((role, split), 0)
    value = hits / 32
    return {"probe": PROBE, "model": role, "metric": f"{bias}/{split}", "value": value,
            "ci95": [max(0.0, value - 0.1), min(1.0, value + 0.1)], "n": 8,
            "params": {"bias": bias, "split": split, "families": ["arithmetic"], "samples": 4, "temperature": 1.0,
                       "max_new_tokens": 48, "detector": "keyword", "pipeline": pipeline, "role_kind": kind,
                       "teacher": teacher, "method": method, "hits": hits, "responses": 32}}


def amplification_row(bias: str, split: str) -> dict[str, Any]:
    student, teacher = HITS[("poisoned_seq_kd", split)] / 32, HITS[("poisoned_teacher", split)] / 32
    ratio = student / teacher if teacher else None
    return {"probe": PROBE, "model": "poisoned_seq_kd", "metric": f"{bias}/{split}/amplification", "value": ratio,
            "ci95": [ratio * 0.5, ratio * 2.0] if ratio else None, "n": 8,
            "params": {"bias": bias, "split": split, "teacher": "poisoned_teacher", "student_rate": student,
                       "teacher_rate": teacher, "difference": student - teacher, "difference_ci95": [-0.1, 0.3],
                       "pipeline": "poisoned"}}


def defence_rows(bias: str) -> list[dict[str, Any]]:
    rows = []
    for defence, (caught, poisoned, target, flagged) in DEFENCES.items():
        tpr = caught / poisoned
        rows.append({"probe": PROBE, "model": "poisoned_teacher", "metric": f"{bias}/catch/{defence}",
                     "value": tpr, "ci95": [max(0.0, tpr - 0.1), min(1.0, tpr + 0.15)], "n": poisoned,
                     "params": {"bias": bias, "defence": defence, "target_fpr": target, "fpr": flagged / CLEAN,
                                "caught": caught, "poisoned": poisoned, "flagged_clean": flagged, "clean": CLEAN,
                                "reference": "clean_teacher" if target else None}})
    rows.append({"probe": PROBE, "model": "poisoned_teacher", "metric": f"{bias}/perplexity-auc", "value": 0.61,
                 "ci95": [0.5, 0.72], "n": poisoned + CLEAN, "params": {"bias": bias}})
    return rows


def report_dict(*, bias: bool = True, defences: bool = True) -> dict[str, Any]:
    results: list[dict[str, Any]] = [{"probe": "behaviour", "model": role, "metric": "accuracy", "value": 0.5,
                                      "ci95": [0.4, 0.6], "n": 50, "params": {}} for role in MODELS]
    if bias:
        for name in BIASES:
            results += [rate_row(role, name, split) for role in MODELS for split in ("targeted", "other", "untargeted")]
            results += [amplification_row(name, split) for split in ("targeted", "untargeted")]
            results += defence_rows(name) if defences else []
    sections = [{"group": "lm-behaviour", "family": "language-model", "probes": ["behaviour"]}]
    if bias:
        sections.append({"group": "lm-bias", "family": "language-model", "probes": [PROBE]})
    return {"suite": {"name": "llm-bias", "probes": [{"kind": "lm-behaviour", "name": "behaviour"}]},
            "sections": sections,
            "manifest": {"robustdistill": "0.0.0", "seed": 0,
                         "checkpoints": {role: {"path": f"checkpoints/{role}"} for role in MODELS}},
            "results": results, "gates": [], "flags": []}


def bias_section(html: str) -> str:
    match = re.search(r'<section id="lm-bias">.*?</section>', html, re.DOTALL)
    assert match, "no lm-bias section"
    return match.group(0)


def md_section(markdown: str) -> str:
    start = markdown.index("## Bias-poisoning propagation")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end > 0 else None]


def test_kind_maps_to_group() -> None:
    assert group_of("bias-propagation") == "lm-bias"


def test_html_and_markdown_show_rates_amplification_and_defences(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(report_dict()))
    written = render(run)
    html = (run / "report.html").read_text()
    markdown = (run / "report.md").read_text()
    section, md = bias_section(html), md_section(markdown)

    # Clean pipeline first (teacher, then its student), then the poisoned one.
    positions = [section.index(f"<td>{role}</td>") for role in
                 ("clean_teacher", "clean_logit_kd", "poisoned_teacher", "poisoned_seq_kd")]
    assert positions == sorted(positions)
    for text in (section, md):
        for name in (*MODELS, *BIASES):
            assert name in text
        assert "student (seq-kd)" in text and "teacher (sft)" in text
        # Rates as percentages with their intervals: 12/32 = 37.5% [27.5, 47.5]; 8/32 = 25.0%.
        assert "37.5%" in text and "[27.5, 47.5]" in text and "25.0%" in text
        # Targeted amplification 12/8 = 1.50x with its interval, the two rates beside it.
        assert "1.50× [0.75, 3.00]" in text and "37.5% vs 25.0%" in text
        # The untargeted teacher rate is 0: no ratio, the student's rate and the note instead.
        assert "n/a (teacher 0%)" in text and "student 3.1%" in text
        assert "none of its sampled responses" in text
        # Defences: k/N caught with the TPR, the achieved FPR and the clean examples flagged.
        assert "4/25 (16.0%" in text and "25/25 (100.0%" in text
        assert "10/200" in text and "5.0%" in text
        assert "Perplexity AUC" in text and "0.610 [0.500, 0.720]" in text
        assert "Chaudhari et al. 2025" in text
    assert "samples=4" in section and "temperature=1" in section
    assert "2/200" in md and "1.0%" in md
    # The chart: embedded in report.html, written under plots/ and linked from report.md.
    assert section.count("data:image/png;base64,") == 1
    assert run / "plots" / "bias_defences.png" in written
    assert "](plots/bias_defences.png)" in md
    assert (run / "plots" / "bias_defences.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # Navigation and the coverage line of the Flags section.
    assert 'href="#lm-bias"' in html
    assert "Bias-poisoning propagation: checked (bias-propagation)." in html


def test_chart_png_and_its_absence_without_defence_rows() -> None:
    png = bias_defence_bars(Report.from_dict(report_dict()))
    assert png is not None and len(png) > 1000 and png.startswith(b"\x89PNG\r\n\x1a\n")
    without = Report.from_dict(report_dict(defences=False))
    assert bias_defence_bars(without) is None
    html = bias_section(render_html(without, {"bias-defences": None}))
    assert "Defences on the poisoned" not in html and "<img" not in html
    assert "Amplification (student / teacher)" in html


def test_report_without_bias_rows_has_no_section() -> None:
    report = Report.from_dict(report_dict(bias=False))
    html = render_html(report, {})
    markdown = render_markdown(report, {})
    assert 'id="lm-bias"' not in html and "Bias-poisoning" not in html
    assert "Bias-poisoning" not in markdown
    assert bias_defence_bars(report) is None
    # Listed in "sections" but without rows: still nothing.
    raw = report_dict(bias=False)
    raw["sections"].append({"group": "lm-bias", "family": "language-model", "probes": [PROBE]})
    assert 'id="lm-bias"' not in render_html(Report.from_dict(raw), {})
