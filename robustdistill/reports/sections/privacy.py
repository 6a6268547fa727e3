"""The privacy group (membership inference): a table per probe and member set with a column group per role, every
value with its 95% interval, the footnotes of unresolvable rates and one log-log ROC plot per probe."""

from __future__ import annotations

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, value_cell
from robustdistill.reports.privacy_data import MIA_METRICS, PRIVACY_INTRO, ROC_KEY, VIEWS, Privacy
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register

TITLE = "Membership inference (privacy)"


def _table_html(privacy: Privacy, notes: Footnotes) -> str:
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
                value = value_cell(entry.cells.get(role, {}).get(metric), notes)
                cells.append(f"<td{start if i == 0 else num}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="compact privacy stack"><thead>{head}</thead><tbody>{"".join(body)}'
        "</tbody></table></div>"
    )


def html(ctx: Context) -> HtmlParts:
    privacy = ctx.privacy
    if privacy is None:
        return []
    notes = Footnotes()
    sizes = {entry.sizes() for entry in privacy.rows}
    content = [
        f"<p>{esc(PRIVACY_INTRO)}</p>",
        _table_html(privacy, notes),
        notes.html(),
        '<p class="note">'
        + (f"Members / non-members: {esc(next(iter(sizes)))} for every row. " if len(sizes) == 1 else "")
        + esc(INTERVALS)
        + "</p>",
    ]
    for probe in privacy.probes:
        content.append(
            _figure(
                ctx.pngs.get(ROC_KEY + probe),
                f"Log-log ROC curves of membership inference attack {probe}, one line per model and member set",
                "True-positive against false-positive rate, both on log axes so the low-FPR corner is readable. Solid: "
                "each model attacked with its own members; dashed: with the teacher's members; dotted: chance.",
                f"No ROC curves for {probe}.",
            )
        )
        content += [f'<p class="note">{esc(probe)}: {esc(note)}.</p>' for note in privacy.notes.get(probe, [])]
    return [("privacy", "Privacy", _section("privacy", TITLE, "\n".join(content)))]


def markdown(ctx: Context) -> list[str]:
    privacy = ctx.privacy
    if privacy is None:
        return []
    notes = md_page.Footnotes()
    out = [f"## {TITLE}", "", PRIVACY_INTRO, ""]
    header = ["probe", "attacked with", "members / non-members"]
    header += [f"{role} {title}".replace("\n", " ") for role in privacy.roles for title in MIA_METRICS.values()]
    rows = [
        [entry.title(), VIEWS[entry.view], entry.sizes()]
        + [md_page.value_text(entry.cells.get(role, {}).get(metric), notes)
           for role in privacy.roles for metric in MIA_METRICS]
        for entry in privacy.rows
    ]
    out += md_page.table(header, rows, "lll" + "r" * (len(header) - 3))
    out += ["", INTERVALS_MD, ""] + notes.lines()
    for probe in privacy.probes:
        link = ctx.links.get(ROC_KEY + probe)
        if link:
            out += [f"![Membership inference ROC ({probe})]({link})", ""]
        out += [f"_{probe}: {note}._" for note in privacy.notes.get(probe, [])]
        if privacy.notes.get(probe):
            out.append("")
    return out


register(Section("privacy", "membership inference", 40, html, markdown))
