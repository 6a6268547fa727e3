"""The image-attacks group (clean accuracy, attacks, robustness curves): the teacher-vs-student table, with the
gate on each value and the student's retention of the teacher's, then the robustness curve, the per-attack bars
and the adversarial examples (the plots only when the suite perturbs inputs).
"""

from __future__ import annotations

from robustdistill.reports import md_page
from robustdistill.reports.data import ComparisonRow, Report
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, gate_badges, html_table, value_cell
from robustdistill.reports.records import Row
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register
from robustdistill.reports.status import gate_key, gate_status, gates_by_metric, reduced_note, retention_key

RETENTION = "Retention is the student's value as a share of the teacher's."


def retention_row(report: Report, entry: ComparisonRow) -> Row | None:
    """The retention probe's row for this entry (with its interval), else one computed from the two values."""
    for row in report.rows:
        if row.probe == "retention" and row.model == "student" and row.metric == f"{entry.metric}_retention":
            if row.params.get("of") in (entry.probe, entry.label):
                return row
    value = entry.retention()
    return None if value is None else Row("retention", "student", f"{entry.metric}_retention", value, None, None, {})


def retention_in_comparison(report: Report) -> list[Row]:
    """The retention probe's rows that the teacher-vs-student table shows in its retention column (the transfer
    section lists only the others)."""
    roles, entries = report.comparison()
    if not {"teacher", "student"} <= set(roles):
        return []
    stored = {id(row) for row in report.rows}  # not the ones computed here for want of a retention row
    shown = [retention_row(report, entry) for entry in entries]
    return [row for row in shown if row is not None and id(row) in stored]


def reduced_notes(report: Report, labels: list[str]) -> list[str]:
    """The one-line explanation of each reduced attack among ``labels`` (deduplicated, in order)."""
    return [reduced_note(label, report.reduced[label]) for label in dict.fromkeys(labels) if label in report.reduced]


def _untrusted(ctx: Context, role: str, entry: ComparisonRow) -> bool:
    return role in ctx.masked and entry.metric != "accuracy"


def comparison_html(ctx: Context) -> str:
    report = ctx.report
    roles, entries = report.comparison()
    if not entries:
        return '<p class="note">No accuracy rows to compare.</p>'
    gates = gates_by_metric(report.gates)
    notes = Footnotes()
    retention = "teacher" in roles and "student" in roles
    header = ["Metric", *map(esc, roles)] + (["Retention<br><small>student / teacher</small>"] if retention else [])
    rows = []
    for entry in entries:
        title = esc(entry.title())
        if entry.detail():
            title += f'<span class="detail">{esc(entry.detail())}</span>'
        row = [title]
        for role in roles:
            gate = gates.get(gate_key(role, entry.probe, entry.metric))
            badges = gate_badges(gate_status(gate, ctx.masked), notes) if gate else ""
            row.append(value_cell(entry.cells.get(role), notes, _untrusted(ctx, role, entry), badges))
        if retention:
            gate = gates.get(retention_key(entry.probe))
            badges = gate_badges(gate_status(gate, ctx.masked), notes) if gate else ""
            untrusted = bool({"teacher", "student"} & ctx.masked) and entry.metric != "accuracy"
            row.append(value_cell(retention_row(report, entry), notes, untrusted, badges))
        rows.append(row)
    explain = [INTERVALS] + ([RETENTION] if retention else [])
    reduced = reduced_notes(report, [entry.label for entry in entries])
    return (
        html_table(header, rows, numeric=range(1, len(header)))
        + notes.html()
        + "".join(f'<p class="note reduced">⚠ {esc(text)}</p>' for text in reduced)
        + f'<p class="note">{esc(" ".join(explain))}</p>'
    )


def html(ctx: Context) -> HtmlParts:
    report, pngs = ctx.report, ctx.pngs
    parts = [("comparison", "Teacher vs student", _section("comparison", "Teacher vs student", comparison_html(ctx)))]
    if not report.attacks_inputs:  # a privacy-only suite: no curve, bars or adversarial examples to show
        return parts
    curve = _figure(
        pngs.get("curve"),
        "Robust accuracy against perturbation budget, all models on one plot",
        "Robust accuracy as the perturbation budget ε grows; shaded bands are 95% confidence intervals, the dotted "
        "line marks the suite's threat model.",
        'This run has no robustness-curve rows (probe "curve").',
    )
    bars = _figure(
        pngs.get("attacks"),
        "Clean and robust accuracy per attack, grouped by model",
        "Clean accuracy and robust accuracy under each attack; error bars are 95% confidence intervals.",
        "This run has no clean or robust accuracy rows.",
    )
    examples = _figure(
        pngs.get("examples"),
        "Grid of clean inputs, adversarial inputs and perturbations per model",
        "Top row: clean inputs with their true label. Per model: the adversarial input titled “clean prediction → "
        "adversarial prediction” (red when wrong), and the perturbation (red = brighter, blue = darker).",
        f"No examples: {ctx.examples_note}." if ctx.examples_note else "No examples.",
    )
    for anchor, title, content in (("curves", "Robustness curve", curve), ("attacks", "Per attack", bars),
                                   ("examples", "Examples", examples)):
        parts.append((anchor, title, _section(anchor, title, content)))
    return parts


def markdown(ctx: Context) -> list[str]:
    report = ctx.report
    roles, entries = report.comparison()
    out: list[str] = []
    if entries:
        gates = gates_by_metric(report.gates)
        notes = md_page.Footnotes()
        retention = "teacher" in roles and "student" in roles
        header = ["metric", *roles] + (["retention (student / teacher)"] if retention else [])
        rows = []
        for entry in entries:
            row = [entry.title()]
            for role in roles:
                gate = gates.get(gate_key(role, entry.probe, entry.metric))
                status = md_page.gate_text(gate_status(gate, ctx.masked), notes) if gate else ""
                row.append(md_page.value_text(entry.cells.get(role), notes, _untrusted(ctx, role, entry), status))
            if retention:
                gate = gates.get(retention_key(entry.probe))
                status = md_page.gate_text(gate_status(gate, ctx.masked), notes) if gate else ""
                untrusted = bool({"teacher", "student"} & ctx.masked) and entry.metric != "accuracy"
                row.append(md_page.value_text(retention_row(report, entry), notes, untrusted, status))
            rows.append(row)
        out += ["## Teacher vs student", ""]
        out += md_page.table(header, rows, "l" + "r" * (len(header) - 1)) + [""]
        out += notes.lines()
        out += [line for text in reduced_notes(report, [e.label for e in entries]) for line in (f"⚠️ {text}", "")]
        out += [INTERVALS_MD + (" " + RETENTION if retention else ""), ""]
    if report.attacks_inputs:
        plots = [(key, caption) for key, caption in (("curve", "Robustness curve"),
                 ("attacks", "Clean and robust accuracy per attack"), ("examples", "Clean and adversarial examples"))
                 if key in ctx.links]
        if plots or ctx.examples_note:
            out += ["## Plots", ""]
            out += [line for key, caption in plots for line in (f"![{caption}]({ctx.links[key]})", "")]
            if ctx.examples_note:
                out += [f"_Examples: {ctx.examples_note}._", ""]
    return out


register(Section("image-attacks", "accuracy and attacks", 10, html, markdown))
