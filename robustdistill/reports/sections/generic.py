"""A probe group no section module registered (a new model family's probes before their section exists): its rows
as a plain table, so nothing the runner measured goes unshown."""

from __future__ import annotations

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, fmt_params, humanise, shared_params
from robustdistill.reports.sections import INTERVALS, Context, HtmlParts, Section, SectionSpec


def _title(group: str) -> str:
    return humanise(group.replace("-", " "))


def _rows(ctx: Context) -> list[Row]:
    return [r for r in ctx.report.rows if r.probe in set(ctx.spec.probes)]


def html(ctx: Context) -> HtmlParts:
    rows = _rows(ctx)
    if not rows:
        return []
    anchor, title = f"group-{ctx.spec.group}", _title(ctx.spec.group)
    notes = Footnotes()
    shared, params = shared_params(rows)
    body = [[esc(r.probe), esc(r.model), esc(humanise(r.metric)), f'<span class="mono">{esc(fmt_params(own))}</span>',
             value_cell(r, notes)] for r, own in zip(rows, params)]
    content = (
        (f'<p class="settings">Shared by every row: {esc(fmt_params(shared))}.</p>' if shared else "")
        + html_table(["Probe", "Model", "Metric", "Params", "Value"], body, numeric=(4,))
        + notes.html()
        + f'<p class="note">{esc(INTERVALS)}</p>'
    )
    return [(anchor, title, _section(anchor, title, content))]


def markdown(ctx: Context) -> list[str]:
    rows = _rows(ctx)
    if not rows:
        return []
    notes = md_page.Footnotes()
    shared, params = shared_params(rows)
    body = [[r.probe, r.model, humanise(r.metric), fmt_params(own), md_page.value_text(r, notes)]
            for r, own in zip(rows, params)]
    out = [f"## {_title(ctx.spec.group)}", ""] + ([f"Shared by every row: {fmt_params(shared)}.", ""] if shared else [])
    return out + md_page.table(["probe", "model", "metric", "params", "value"], body, "llllr") + [""] + notes.lines()


def section_for(spec: SectionSpec) -> Section:
    """The generic section for an unregistered group (never registered itself: each such group gets its own)."""
    return Section(spec.group, _title(spec.group).lower(), 1000, html, markdown)
