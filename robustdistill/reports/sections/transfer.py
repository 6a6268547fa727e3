"""The transfer-and-agreement group: adversarial examples crafted on one model and evaluated on another, how often
teacher and student agree (the attack settings they share printed once), and the student's retention of the
teacher's accuracies with the gate on each."""

from __future__ import annotations

from robustdistill.reports import md_page
from robustdistill.reports.data import Report
from robustdistill.reports.html_page import Footnotes, _section, esc, gate_badges, html_table, value_cell
from robustdistill.reports.records import Gate, Row, fmt_params, humanise, shared_params
from robustdistill.reports.sections import INTERVALS, Context, HtmlParts, Section, register
from robustdistill.reports.sections.image_attacks import reduced_notes, retention_in_comparison
from robustdistill.reports.status import gate_status, gates_by_metric, retention_key

TITLE = "Transfer and agreement"
RETENTION = "Retention is the student's value as a share of the teacher's."


def _rows(report: Report, probe: str) -> list[Row]:
    rows = [r for r in report.rows if r.probe == probe]
    if probe == "retention":  # those in the teacher-vs-student table's retention column are not repeated here
        shown = {id(row) for row in retention_in_comparison(report)}
        rows = [r for r in rows if id(r) not in shown]
    return rows


def _of(row: Row) -> str:
    return str(row.params.get("of", ""))


def _retention_gate(ctx: Context, row: Row) -> Gate | None:
    return gates_by_metric(ctx.report.gates).get(retention_key(_of(row)))


def _untrusted(ctx: Context, row: Row) -> bool:
    """A retention of a robust accuracy when teacher or student was flagged for gradient masking."""
    return bool({"teacher", "student"} & ctx.masked) and row.metric != "accuracy_retention"


def _settings(shared: dict[str, object]) -> str:
    return f"Shared by every row: {fmt_params(shared)}." if shared else ""


def html(ctx: Context) -> HtmlParts:
    report = ctx.report
    transfer, agreement, retention = report.transfer_rows(), _rows(report, "agreement"), _rows(report, "retention")
    if not (transfer or agreement or retention):
        return []
    notes = Footnotes()
    content = []
    if transfer:
        rows = [[esc(r.params.get("source", "?")), esc(r.params.get("target", r.model)),
                 esc(report.display_label(r.label)), esc(humanise(r.metric)), value_cell(r, notes)] for r in transfer]
        header = ["Crafted on", "Evaluated on", "Attack", "Metric", "Value"]
        content.append("<h3>Transfer</h3>" + html_table(header, rows, numeric=(4,)))
    if agreement:
        shared, params = shared_params(agreement)
        rows = [[esc(humanise(r.metric)), esc(r.model), f'<span class="mono">{esc(fmt_params(own))}</span>',
                 value_cell(r, notes)] for r, own in zip(agreement, params)]
        settings = _settings(shared)
        content.append(
            "<h3>Agreement</h3>"
            + (f'<p class="settings">{esc(settings)}</p>' if settings else "")
            + html_table(["Metric", "Model", "Params", "Value"], rows, numeric=(3,))
        )
    if retention:
        rows = []
        for r in retention:
            gate = _retention_gate(ctx, r)
            badges = gate_badges(gate_status(gate, ctx.masked), notes) if gate else ""
            rows.append([esc(humanise(r.metric)), esc(report.display_label(_of(r))), esc(r.model),
                         value_cell(r, notes, _untrusted(ctx, r), badges)])
        content.append("<h3>Retention</h3>" + html_table(["Metric", "Of", "Model", "Value"], rows, numeric=(3,)))
    content.append(notes.html())
    reduced = reduced_notes(report, [r.label for r in transfer] + [_of(r) for r in retention])
    content += [f'<p class="note reduced">⚠ {esc(text)}</p>' for text in reduced]
    content.append(f'<p class="note">{esc(INTERVALS)}{" " + RETENTION if retention else ""}</p>')
    return [("transfer", TITLE, _section("transfer", TITLE, "\n".join(content)))]


def markdown(ctx: Context) -> list[str]:
    report = ctx.report
    transfer, agreement, retention = report.transfer_rows(), _rows(report, "agreement"), _rows(report, "retention")
    out: list[str] = []
    notes = md_page.Footnotes()
    if transfer:
        rows = [[r.params.get("source", "?"), r.params.get("target", r.model), report.display_label(r.label),
                 humanise(r.metric), md_page.value_text(r, notes)] for r in transfer]
        out += ["## Transfer", ""]
        out += md_page.table(["crafted on", "evaluated on", "attack", "metric", "value"], rows, "llllr") + [""]
    if agreement:
        shared, params = shared_params(agreement)
        rows = [[humanise(r.metric), r.model, fmt_params(own), md_page.value_text(r, notes)]
                for r, own in zip(agreement, params)]
        out += ["## Agreement", ""] + ([_settings(shared), ""] if shared else [])
        out += md_page.table(["metric", "model", "params", "value"], rows, "lllr") + [""]
    if retention:
        rows = []
        for r in retention:
            gate = _retention_gate(ctx, r)
            status = md_page.gate_text(gate_status(gate, ctx.masked), notes) if gate else ""
            rows.append([humanise(r.metric), report.display_label(_of(r)), r.model,
                         md_page.value_text(r, notes, _untrusted(ctx, r), status)])
        out += ["## Retention", ""] + md_page.table(["metric", "of", "model", "value"], rows, "lllr") + [""]
    out += notes.lines()
    reduced = reduced_notes(report, [r.label for r in transfer] + [_of(r) for r in retention])
    out += [f"⚠️ {text}" for text in reduced] + ([""] if reduced else [])
    return out


register(Section("transfer-agreement", "transfer and agreement", 20, html, markdown))
