"""The two optional sections of report.html: membership inference (privacy: the table per probe and view, its
footnotes and ROC curves) and accuracy and robustness against model size. :func:`robustdistill.reports.html.render_html`
adds them when the run has their rows.
"""

from __future__ import annotations

from collections.abc import Mapping

from robustdistill.reports.html_page import _cell_value, _figure, _section, esc
from robustdistill.reports.privacy_data import MIA_METRICS, PRIVACY_INTRO, ROC_KEY, VIEWS, Privacy
from robustdistill.reports.records import NOT_RESOLVABLE, Row, fmt_interval, fmt_size, fmt_value
from robustdistill.reports.size_data import SIZE_TITLE, Size, SizeColumn


def _privacy_cell(row: Row | None, privacy: Privacy) -> str:
    """The value alone, its interval and n in the tooltip: with a column per role and metric the table would
    not fit with "± half-width" in every cell."""
    if row is None:
        return '<span class="note">—</span>'
    if row.unresolvable:
        number = privacy.footnote(row)
        return (
            f'<span class="note wrap" title="{esc(row.note or NOT_RESOLVABLE)}">{NOT_RESOLVABLE}</span>'
            + (f"<sup>{number}</sup>" if number else "")
        )
    tip = [f"95% CI {fmt_interval(row.ci95, row.metric)}"] if row.ci95 is not None else []
    tip += [f"n = {row.n}"] if row.n is not None else []
    return f'<span title="{esc(", ".join(tip))}">{esc(fmt_value(row.value, row.metric))}</span>'


def _privacy_section(privacy: Privacy, plots: Mapping[str, bytes | None]) -> str:
    """The membership-inference table (a column group per role), its footnotes, then one ROC plot per probe."""
    num, start = ' class="num"', ' class="num group-start"'  # a role's first column draws the group's edge
    titles = [esc(title).replace("\n", "<br>") for title in MIA_METRICS.values()]
    head = (
        '<tr><th rowspan="2">Probe</th><th rowspan="2">Attacked with</th>'
        + "".join(f'<th class="group" colspan="{len(MIA_METRICS)}">{esc(role)}</th>' for role in privacy.roles)
        + "</tr><tr>"
        + "".join(
            f"<th{start if i == 0 else num}>{title}</th>" for _ in privacy.roles for i, title in enumerate(titles)
        )
        + "</tr>"
    )
    # The set sizes go in the caption when every row shares them (the usual case), else under each row's view.
    sizes = {entry.sizes() for entry in privacy.rows}
    body = []
    for entry in privacy.rows:
        kind = f'<span class="detail">{esc(entry.kind)}</span>' if entry.kind != entry.probe else ""
        size = "" if len(sizes) == 1 else f'<span class="detail">members / non-members {esc(entry.sizes())}</span>'
        cells = [f"<td>{esc(entry.probe)}{kind}</td>", f"<td>{esc(VIEWS[entry.view])}{size}</td>"]
        for role in privacy.roles:
            for i, metric in enumerate(MIA_METRICS):
                value = _privacy_cell(entry.cells.get(role, {}).get(metric), privacy)
                cells.append(f"<td{start if i == 0 else num}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    content = [
        f"<p>{esc(PRIVACY_INTRO)}</p>",
        f'<div class="scroll"><table class="compact privacy"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        "</table></div>",
        '<p class="note">'
        + (f"Members / non-members: {esc(next(iter(sizes)))} for every row. " if len(sizes) == 1 else "")
        + "Hover a value for its 95% confidence interval and n.</p>",
    ]
    footnotes = privacy.footnotes()
    if footnotes:
        content.append('<ol class="footnotes">' + "".join(f"<li>{esc(n)}</li>" for n in footnotes) + "</ol>")
    for probe in privacy.probes:
        content.append(
            _figure(
                plots.get(ROC_KEY + probe),
                f"Log-log ROC curves of membership inference attack {probe}, one line per model and member set",
                "True-positive against false-positive rate, both on log axes so the low-FPR corner is readable. Solid: "
                "each model attacked with its own members; dashed: with the teacher's members; dotted: chance.",
                f"No ROC curves for {probe}.",
            )
        )
        content += [f'<p class="note">{esc(probe)}: {esc(note)}.</p>' for note in privacy.notes.get(probe, [])]
    return _section("privacy", "Membership inference (privacy)", "\n".join(content))


def _size_section(size: Size, threat: str, png: bytes | None, masked: set[str]) -> str:
    """The models by size, smallest first: parameters, MACs, clean accuracy and robust accuracy per attack, then the
    plot of accuracy against parameters."""
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
        macs = model.macs
        exact = esc(fmt_value(model.parameters.value, "parameters"))
        cells = [
            f"<td>{esc(model.role)}</td>",
            f'<td class="num"><span title="{exact} parameters">{esc(fmt_size(model.parameters.value))}</span></td>',
        ]
        if macs is not None:
            exact = esc(fmt_value(macs.value, "macs"))
            cells.append(f'<td class="num"><span title="{exact} MACs">{esc(fmt_size(macs.value))}</span></td>')
        else:
            cells.append('<td class="num"><span class="note">—</span></td>')
        for column in [*clean, *robust]:
            found = column.cells.get(model.role)
            value = _cell_value(found, column.robust and model.role in masked)
            cells.append(f"<td{num}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    content = [
        f"<p>{esc(size.intro(threat))}</p>",
        f'<div class="scroll"><table class="size"><thead>{header}</thead><tbody>{"".join(body)}</tbody></table></div>',
        '<p class="note">Hover a value for its 95% confidence interval and n, a size for the exact count.</p>',
        _figure(
            png,
            "Clean and robust accuracy against the number of parameters, one line per metric, one point per model",
            "Accuracy against parameters (log scale): one line per metric, the teacher a star.",
            "No plot of accuracy against size.",
        ),
    ]
    return _section("size", SIZE_TITLE, "\n".join(content))
