"""The masking group: the gradient-masking checks' measurements per model (which of them flagged is in the Flags
section). The probe's settings are the same on every row, so they are printed once above the table and each row
shows only the attack its check ran."""

from __future__ import annotations

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, fmt_param, fmt_params, humanise, shared_params
from robustdistill.reports.sections import INTERVALS, Context, HtmlParts, Section, register

TITLE = "Gradient masking checks"
INTRO = ("Each check attacks the model a second way (more steps, restarts, another loss, a larger radius, rescaled "
         "logits, a gradient-free attack); a check flags masking when its number disagrees with the plain attack's "
         "beyond the tolerance. The flags, with their evidence, are under Flags.")


def _rows(ctx: Context) -> list[Row]:
    names = set(ctx.spec.probes) or {"masking"}
    return [r for r in ctx.report.rows if r.probe in names or r.probe == "masking"]


def _check(params: dict[str, object]) -> str:
    """What a row's check ran (``pgd, steps=40, eps=0.125, loss=ce``), from its ``check`` param."""
    check = params.pop("check", None)
    parts = []
    if isinstance(check, dict):
        attack = check.get("attack") or check.get("attacks")
        parts += [str(attack)] if attack else []
        parts += [f"{k}={fmt_param(v)}" for k, v in check.items() if k not in ("attack", "attacks")]
    elif check is not None:
        parts.append(fmt_param(check))
    rest = fmt_params(params)
    return ", ".join(parts + ([rest] if rest else []))


def _table(ctx: Context) -> tuple[str, list[list[str]], list[Row]]:
    rows = _rows(ctx)
    shared, params = shared_params(rows)
    settings = f"Settings of every check: {fmt_params(shared)}." if shared else ""
    return settings, [[r.model, humanise(r.metric), _check(own)] for r, own in zip(rows, params)], rows


def html(ctx: Context) -> HtmlParts:
    settings, cells, rows = _table(ctx)
    if not rows:
        return []
    notes = Footnotes()
    body = [[esc(model), esc(metric), f'<span class="mono">{esc(check)}</span>', value_cell(r, notes)]
            for (model, metric, check), r in zip(cells, rows)]
    content = (
        f"<p>{esc(INTRO)}</p>"
        + (f'<p class="settings">{esc(settings)}</p>' if settings else "")
        + html_table(["Model", "Check", "Attack of the check", "Value"], body, numeric=(3,), css="compact")
        + notes.html()
        + f'<p class="note">{esc(INTERVALS)}</p>'
    )
    return [("masking", TITLE, _section("masking", TITLE, content))]


def markdown(ctx: Context) -> list[str]:
    settings, cells, rows = _table(ctx)
    if not rows:
        return []
    notes = md_page.Footnotes()
    body = [[model, metric, check, md_page.value_text(r, notes)] for (model, metric, check), r in zip(cells, rows)]
    out = [f"## {TITLE}", "", INTRO, ""] + ([settings, ""] if settings else [])
    return out + md_page.table(["model", "check", "attack of the check", "value"], body, "lllr") + [""] + notes.lines()


register(Section("masking", "gradient masking", 50, html, markdown))
