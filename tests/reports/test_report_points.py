"""What a new user found wrong in the reports (issue 12, section 2), checked on the REAL runner output of tiny audits
(tests/reports/conftest.py: a clean teacher and a defensively distilled student that masks gradients, audited with
a reduced AutoAttack, the masking probe and gates; and a privacy-only audit of the same pair): intervals printed as
intervals, one gate status everywhere, a title naming the pipeline, a collapsed results table, the masking
settings once, a readable manifest, what was and was not checked, an index with teacher and student side by side,
and reduced attacks labelled as reduced."""

from __future__ import annotations

import inspect
import json
import re
import shutil
from html import escape
from pathlib import Path
from typing import Any

import pytest

from robustdistill.reports import index_entry, render, render_index
from robustdistill.reports.records import fmt_ci, fmt_interval, fmt_value
from robustdistill.reports.status import AUTOATTACK_STANDARD, reduced_attack

Rendered = tuple[dict[str, Any], str, str]


@pytest.fixture(scope="module")
def dd_run(audited_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("points") / "dd-student"
    shutil.copytree(audited_run, run_dir)
    render(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def dd(dd_run: Path) -> Rendered:
    return (json.loads((dd_run / "report.json").read_text()), (dd_run / "report.html").read_text(),
            (dd_run / "report.md").read_text())


@pytest.fixture(scope="module")
def privacy(privacy_run: Path) -> Rendered:
    return (json.loads((privacy_run / "report.json").read_text()), (privacy_run / "report.html").read_text(),
            (privacy_run / "report.md").read_text())


def section(html: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">.*?</section>', html, re.S)
    assert match, f"no {anchor} section"
    return match.group(0)


def md_section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


def row(raw: dict[str, Any], probe: str, model: str, metric: str) -> dict[str, Any]:
    return next(r for r in raw["results"] if (r["probe"], r["model"], r["metric"]) == (probe, model, metric))


def html_value(found: dict[str, Any]) -> str:
    """How report.html prints a row's value: the value, then its interval."""
    text = fmt_value(found["value"], found["metric"])
    return f'{text} <span class="ci">{fmt_interval(tuple(found["ci95"]), found["metric"])}</span>'


# --- 1. intervals ----------------------------------------------------------------------------------------------------


def test_intervals_are_printed_not_plus_minus(dd: Rendered, privacy: Rendered) -> None:
    for raw, html, md in (dd, privacy):
        assert "±" not in html and "±" not in md  # an asymmetric Wilson interval is no "x ± h"
        clean = row(raw, "clean", "student", "accuracy")
        assert html_value(clean) in section(html, "comparison")
        assert fmt_ci(clean["value"], tuple(clean["ci95"]), "accuracy") in md_section(md, "Teacher vs student")
        assert re.search(r"\d+\.\d% \[\d+(\.\d)?, \d+(\.\d)?\]", md)  # "66.0% [52.2, 77.6]"
    # The interval's ends: one decimal, the ends of the scale as 0 and 100.
    assert fmt_ci(1.0, (0.85, 1.0), "accuracy") == "100.0% [85.0, 100]"
    # AUC intervals printed in the privacy table, for the teacher too.
    raw, html, md = privacy
    for role in ("teacher", "student"):
        auc = row(raw, "mia-loss", role, "auc")
        assert html_value(auc) in section(html, "privacy")
        assert fmt_ci(auc["value"], tuple(auc["ci95"]), "auc") in md_section(md, "Membership inference (privacy)")


# --- 2. gate status ---------------------------------------------------------------------------------------------------


def test_untrusted_gates_show_badge_and_reason_everywhere(dd: Rendered) -> None:
    raw, html, md = dd
    gates = {g["metric"]: g for g in raw["gates"]}
    retention = gates["retention.autoattack"]
    assert retention["status"] == "untrusted" and retention["note"], retention  # the student is flagged for masking
    untrusted = [g for g in raw["gates"] if g["status"] == "untrusted"]
    summary = section(html, "summary")
    for gate in untrusted:
        line = next(tr for tr in re.findall(r"<tr[^>]*>.*?</tr>", summary, re.S) if gate["metric"] in tr)
        assert '<span class="pill fail">FAIL</span> <span class="pill warn">UNTRUSTED</span>' in line
        assert escape(gate["note"]) in line  # the reason in the gates table, not only a hover text
        md_line = next(line for line in md.splitlines() if f"`{gate['metric']}`" in line)
        assert f"❌ FAIL ⚠️ untrusted: {gate['note']}" in md_line
    # Each gate again where the comparison shows its value: the student's robust accuracy under an attack, and the
    # student's retention of the teacher's AutoAttack accuracy (the retention column) ...
    comparison = section(html, "comparison")
    lines = re.findall(r"<tr>.*?</tr>", comparison, re.S)
    for gate in untrusted:
        probe = gate["metric"].split(".")[1]
        line = next(tr for tr in lines if f"Robust accuracy · {probe}" in tr)
        assert '<span class="pill fail">FAIL</span> <span class="pill warn">UNTRUSTED</span><sup class="fn">' in line
        assert f"<li>{escape(gate['note'])}</li>" in comparison
    autoattack = next(tr for tr in lines if "autoattack" in tr)
    assert autoattack.count('<span class="pill warn">UNTRUSTED</span>') == 1  # the retention gate; no gate on ...
    assert '<span class="untrusted"' in autoattack  # ... the student's own value, marked untrusted all the same
    # ... where the retention column shows every retention row, so no second retention table repeats them.
    assert "<h3>Retention</h3>" not in section(html, "transfer")
    # report.md: the same status and reason on the same values.
    md_auto = next(line for line in md_section(md, "Teacher vs student").splitlines() if "autoattack" in line)
    assert md_auto.count("❌ FAIL ⚠️ untrusted") == 1 and md_auto.count("⚠️") == 2
    for gate in untrusted:
        assert gate["note"] in md_section(md, "Teacher vs student")
    assert "## Retention" not in md


# --- 3. title ---------------------------------------------------------------------------------------------------------


def test_title_names_the_pipeline(dd: Rendered) -> None:
    raw, html, md = dd
    names = {role: Path(c["path"]).name for role, c in raw["manifest"]["checkpoints"].items()}
    pipeline = f"{names['teacher']} → {names['student']}"
    assert f"<h1>{escape(pipeline)}</h1>" in html
    assert f"suite {raw['suite']['name']}" in html
    assert f"<title>{escape(pipeline)} — robustdistill audit ({raw['suite']['name']})</title>" in html
    assert md.startswith(f"# Audit report: {pipeline} (suite {raw['suite']['name']})\n")


# --- 4. all results, masking settings, manifest ----------------------------------------------------------------------


def test_results_collapsed_masking_settings_once_manifest_readable(dd: Rendered) -> None:
    raw, html, md = dd
    results = section(html, "results")
    assert "<details>" in results and "<details open" not in results
    assert f"Show all {len(raw['results'])} rows" in results
    masking = section(html, "masking")
    rows = [r for r in raw["results"] if r["probe"] == "masking"]
    assert len(rows) > 5
    # more_steps and square_queries are the probe's settings, shared by every row: printed once, above the table.
    assert masking.count("more_steps=20") == 1 and masking.count("square_queries=100") == 1
    settings = masking.index('<p class="settings">')
    assert settings < masking.index("<table") and masking.index("more_steps=20") < masking.index("<table")
    # Each row says what its check ran.
    assert "pgd, steps=20" in masking and "fgsm, steps=1" in masking
    # The manifest's data row is readable, not raw JSON.
    data = raw["manifest"]["data"]
    manifest = section(html, "manifest")
    line = next(tr for tr in re.findall(r"<tr>.*?</tr>", manifest, re.S) if "<td>data</td>" in tr)
    assert "{" not in line and "kind: digits" in line and f"n: {data['n']}" in line
    assert data["fingerprint"][:12] + "…" in line and data["fingerprint"] not in line.split("title=")[0]
    assert "| data | kind: digits" in md


# --- 5. what was checked ---------------------------------------------------------------------------------------------


def test_no_masking_probe_is_not_reported_as_no_masking(dd: Rendered, privacy: Rendered) -> None:
    raw, html, md = privacy
    assert not raw["flags"] and not any(r["probe"] == "masking" for r in raw["results"])
    for text in (section(html, "flags"), md_section(md, "Flags")):
        assert "none of the checks found signs of gradient masking" not in text
        assert "Gradient masking: not checked (no attack probes)." in text
        assert "Membership inference: checked (mia-loss)." in text
    _, html, md = dd
    assert "Gradient masking: checked on teacher, student." in section(html, "flags")
    assert "Gradient masking: checked on teacher, student." in md_section(md, "Flags")


# --- 6. index ---------------------------------------------------------------------------------------------------------


def test_index_shows_teacher_and_student_with_intervals(dd_run: Path, privacy_run: Path, tmp_path: Path) -> None:
    entries = [index_entry(dd_run, dd_run.parent, name="dd"), index_entry(privacy_run, dd_run.parent, name="privacy")]
    html = render_index(entries, tmp_path / "index.html", title="index").read_text()
    tables = re.findall(r"<table.*?</table>", html, re.S)
    assert len(tables) == 2  # robustness pipelines and the privacy pipeline: no column of dashes for the other
    for raw_dir, table in ((dd_run, tables[0]), (privacy_run, tables[1])):
        raw = json.loads((raw_dir / "report.json").read_text())
        teacher_line, student_line = re.findall(r"<tr[^>]*>.*?</tr>", table.split("<tbody>")[1], re.S)[:2]
        assert "teacher" in teacher_line and "student" in student_line
        for role, line in (("teacher", teacher_line), ("student", student_line)):
            clean = row(raw, "clean", role, "accuracy")
            assert html_value(clean) in line, (role, line)
    # The privacy row shows the teacher's own leakage, next to the student's on both member sets.
    raw = json.loads((privacy_run / "report.json").read_text())
    teacher_line, student_line = re.findall(r"<tr[^>]*>.*?</tr>", tables[1].split("<tbody>")[1], re.S)[:2]
    assert html_value(row(raw, "mia-loss", "teacher", "auc")) in teacher_line
    assert html_value(row(raw, "mia-loss", "student", "teacher_members_auc")) in student_line
    assert "Loss attack AUC (own members)" in tables[1] and "Loss attack AUC (teacher&#x27;s members)" in tables[1]


# --- 7. reduced attacks ----------------------------------------------------------------------------------------------


def test_reduced_autoattack_is_labelled_wherever_it_appears(dd_run: Path, dd: Rendered, tmp_path: Path) -> None:
    raw, html, md = dd
    params = row(raw, "autoattack", "student", "robust_accuracy")["params"]
    assert params["n_queries"] == 50 and params["steps"] == 5  # what the row records is what decides
    why = "iterations 5 (official 100), Square queries 50 (official 5000)"
    assert "Robust accuracy · autoattack (reduced)" in section(html, "comparison")
    assert "<code>retention.autoattack</code> <span class=\"reduced\">(reduced)</span>" in html
    assert "`retention.autoattack` (reduced)" in md
    for text in (section(html, "summary"), section(html, "comparison"), md):
        assert f"autoattack (reduced): {why}." in text  # the one-line explanation next to the number
    assert "| Robust accuracy · autoattack (reduced) |" in md
    results = section(html, "results")
    assert html.replace(results, "").count(">autoattack<") == 0  # never a bare "autoattack" label in a table
    lines = [tr for tr in re.findall(r"<tr>.*?</tr>", results, re.S) if tr.startswith("<tr><td>autoattack</td>")]
    assert len(lines) == sum(r["probe"] == "autoattack" for r in raw["results"]) > 0
    assert all("<td>autoattack (reduced)</td>" in tr for tr in lines)  # the probe's rows, labelled
    # Full-strength attacks are not marked.
    assert "fgsm (reduced)" not in html and "pgd (reduced)" not in html
    entry = index_entry(dd_run, dd_run.parent)
    index = render_index([entry], tmp_path / "index.html", title="index").read_text()
    assert ">autoattack (reduced)</th>" in index and f"autoattack (reduced): {why}." in index


def test_reduced_is_decided_against_the_official_settings() -> None:
    from robustdistill.attacks.autoattack import AutoAttack  # tests may import attacks; reports may not

    defaults = {k: p.default for k, p in inspect.signature(AutoAttack.__init__).parameters.items()}
    assert {k: defaults[k] for k in AUTOATTACK_STANDARD} == AUTOATTACK_STANDARD  # the copy in reports is current
    official = {"attack": "autoattack", "steps": 100, "n_queries": 5000, "n_target_classes": 9, "attacks": None}
    assert reduced_attack(official) == ""
    assert reduced_attack({**official, "n_queries": 1000}) == "Square queries 1000 (official 5000)"
    assert "components apgd-ce" in reduced_attack({**official, "attacks": ["apgd-ce"]})
    assert reduced_attack({"attack": "pgd", "steps": 5}) == ""  # no standard to fall short of


# --- 8. sections registered per probe group --------------------------------------------------------------------------


def test_sections_follow_report_json_and_unknown_groups_get_a_table(dd_run: Path, tmp_path: Path) -> None:
    from robustdistill.reports import Report
    from robustdistill.reports.sections import section_specs

    raw = json.loads((dd_run / "report.json").read_text())
    # Without "sections" (report.json before the runner wrote it): the groups come from the suite's probe kinds.
    raw.pop("sections", None)
    groups = {"clean": "image-attacks", "attack": "image-attacks", "curve": "image-attacks",
              "transfer": "transfer-agreement", "agreement": "transfer-agreement", "retention": "transfer-agreement",
              "masking": "masking"}
    expected: dict[str, tuple[str, ...]] = {}
    for probe in raw["suite"]["probes"]:
        group = groups[probe["kind"]]
        expected[group] = (*expected.get(group, ()), probe.get("name") or probe["kind"])
    derived = {spec.group: spec.probes for spec in section_specs(Report.from_dict(raw))}
    assert derived == expected
    assert expected["image-attacks"] == ("clean", "fgsm", "pgd", "autoattack", "curve")
    # With "sections", they decide: a group left out is not rendered; a group no module registered (a new model
    # family's) gets the generic table of its rows.
    raw["sections"] = [
        {"group": "image-attacks", "family": "classifier", "probes": ["clean", "fgsm", "pgd", "autoattack", "curve"]},
        {"group": "agreement-lm", "family": "language-model", "probes": ["agreement"]},
    ]
    run_dir = tmp_path / "run"
    shutil.copytree(dd_run, run_dir)
    (run_dir / "report.json").write_text(json.dumps(raw))
    render(run_dir)
    html, md = (run_dir / "report.html").read_text(), (run_dir / "report.md").read_text()
    assert '<section id="masking">' not in html and '<section id="transfer">' not in html
    generic = section(html, "group-agreement-lm")
    assert "<h2>Agreement lm</h2>" in generic and '<a href="#group-agreement-lm">' in html
    agreement = [r for r in raw["results"] if r["probe"] == "agreement"]
    assert generic.count("<tr>") == len(agreement) + 1  # every row, and the header
    assert "## Agreement lm" in md
    assert html.index('<section id="comparison">') < html.index('<section id="group-agreement-lm">') < html.index(
        '<section id="flags">')
