"""The size group: the models from smallest to largest (parameters, MACs) with their clean accuracy and robust
accuracy per attack, each with its interval, then the plot of accuracy against parameters. Shown with two or more
sized models."""

from __future__ import annotations

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, value_cell
from robustdistill.reports.records import fmt_size, fmt_value
from robustdistill.reports.sections import INTERVALS, Context, HtmlParts, Section, register
from robustdistill.reports.size_data import SIZE_TITLE, Size, SizeColumn


def _threat(ctx: Context) -> str:
    return ctx.report.threat_model() if ctx.report.attacks_inputs else ""


def _table_html(size: Size, masked: set[str], notes: Footnotes) -> str:
    num = ' class="num"'
    robust = [c for c in size.columns if c.robust]
    clean = [c for c in size.columns if not c.robust]

    def head(column: SizeColumn) -> str:
        tip = f' title="{esc(column.detail)}"' if column.detail else ""
        return f'<th class="num"{tip}>{esc(column.title)}</th>'

    rowspan = ' rowspan="2"' if robust else ""
    header = (
        f"<tr><th{rowspan}>Model</th><th{rowspan}{num}>Parameters</th><th{rowspan}{num}>MACs</th>"
        + "".join(f'<th{rowspan}{num}>Clean accuracy</th>' for _ in clean)
        + (f'<th class="group" colspan="{len(robust)}">Robust accuracy</th></tr><tr>' if robust else "")
        + "".join(head(c) for c in robust)
        + "</tr>"
    )
    body = []
    for model in size.models:
        cells = [f"<td>{esc(model.role)}</td>"]
        for row, unit in ((model.parameters, "parameters"), (model.macs, "macs")):
            if row is None:
                cells.append('<td class="num"><span class="note">—</span></td>')
                continue
            exact = esc(fmt_value(row.value, unit))
            label = "MACs" if unit == "macs" else unit
            cells.append(f'<td class="num"><span title="{exact} {label}">{esc(fmt_size(row.value))}</span></td>')
        for column in [*clean, *robust]:
            value = value_cell(column.cells.get(model.role), notes, column.robust and model.role in masked)
            cells.append(f"<td{num}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = f'<table class="size stack"><thead>{header}</thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def html(ctx: Context) -> HtmlParts:
    size = ctx.report.size()
    if size is None:
        return []
    notes = Footnotes()
    content = [
        f"<p>{esc(size.intro(_threat(ctx)))}</p>",
        _table_html(size, ctx.masked, notes),
        notes.html(),
        f'<p class="note">{esc(INTERVALS)} Hover a size for the exact count.</p>',
        _figure(
            ctx.pngs.get("size"),
            "Clean and robust accuracy against the number of parameters, one line per metric, one point per model",
            "Accuracy against parameters (log scale): one line per metric, the teacher a star.",
            "No plot of accuracy against size.",
        ),
    ]
    return [("size", "Size", _section("size", SIZE_TITLE, "\n".join(content)))]


def markdown(ctx: Context) -> list[str]:
    size = ctx.report.size()
    if size is None:
        return []
    notes = md_page.Footnotes()
    out = [f"## {SIZE_TITLE}", "", size.intro(_threat(ctx)), ""]
    header = ["model", "parameters", "MACs"]
    header += [c.title if c.kind != "attack" else f"robust: {c.title}" for c in size.columns]
    rows = []
    for model in size.models:
        macs = model.macs.value if model.macs is not None else None
        row = [model.role, fmt_size(model.parameters.value), fmt_size(macs)]
        for column in size.columns:
            untrusted = column.robust and model.role in ctx.masked
            row.append(md_page.value_text(column.cells.get(model.role), notes, untrusted))
        rows.append(row)
    out += md_page.table(header, rows, "l" + "r" * (len(header) - 1)) + [""] + notes.lines()
    if "size" in ctx.links:
        out += [f"![{SIZE_TITLE}]({ctx.links['size']})", ""]
    return out


register(Section("size", "model size", 30, html, markdown))
