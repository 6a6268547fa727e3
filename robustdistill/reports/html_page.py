"""The HTML page shell and the helpers every HTML page shares: the inline stylesheet (:data:`CSS`), escaping
(:func:`esc`), PNGs as data URIs, PASS/FAIL pills, tables (:func:`html_table`), the page around a body
(:func:`page`), and a section, a figure and a result cell with its interval and warning. report.html
(:mod:`robustdistill.reports.html`) and index.html (:mod:`robustdistill.reports.html_index`) are built from these.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from robustdistill.reports.records import NOT_RESOLVABLE, Row, fmt_interval, fmt_value
from robustdistill.reports.status import MASKED_NOTE, GateStatus, Notes

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --zebra: #f6f8fa; --bg: #eef1f4;
  --pass: #1a7f37; --pass-bg: #dafbe1; --fail: #cf222e; --fail-bg: #ffebe9; --warn: #9a6700; --warn-bg: #fff8c5;
  --none: #59636e; --none-bg: #eaeef2; --accent: #3b6fb6; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.5; font-size: 15px;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1080px; margin: 24px auto; padding: 32px 40px 40px; background: #fff; border-radius: 12px;
  box-shadow: 0 1px 3px rgba(31,35,40,.08), 0 8px 24px rgba(66,74,83,.06); }
header .eyebrow { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted);
  font-weight: 600; }
h1 { margin: 4px 0 6px; font-size: 28px; line-height: 1.25; }
h2 { margin: 36px 0 12px; font-size: 20px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { margin: 20px 0 8px; font-size: 16px; }
p.sub { margin: 0; color: var(--muted); }
nav { margin: 18px 0 0; display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
code, .mono { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 0.88em; }
code { background: var(--zebra); padding: 1px 5px; border-radius: 4px; }
.verdict { display: flex; align-items: center; gap: 20px; margin: 24px 0 12px; padding: 16px 22px;
  border-radius: 10px; border: 1px solid; }
.verdict .word { font-size: 30px; font-weight: 800; letter-spacing: .04em; }
.verdict .detail { font-size: 16px; }
.verdict.pass { color: var(--pass); background: var(--pass-bg); border-color: #aceebb; }
.verdict.fail { color: var(--fail); background: var(--fail-bg); border-color: #ffcecb; }
.verdict.none { color: var(--none); background: var(--none-bg); border-color: var(--line); }
.verdict .detail { color: var(--fg); }
.reasons { margin: 0 0 16px; padding-left: 22px; }
.reasons li { margin: 4px 0; }
.warning { margin: 12px 0; padding: 14px 18px; border-radius: 8px; background: var(--warn-bg);
  border: 1px solid #f2cc60; border-left: 6px solid #bf8700; }
.warning strong { display: block; font-size: 17px; color: #7d4e00; margin-bottom: 4px; }
.warning ul { margin: 6px 0 0; padding-left: 20px; }
table { width: 100%; border-collapse: collapse; margin: 8px 0 4px; font-size: 14px; }
th, td { padding: 7px 10px; text-align: left; vertical-align: top; border-bottom: 1px solid var(--line); }
th { font-weight: 600; background: #fff; border-bottom: 2px solid var(--line); white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td .detail { display: block; color: var(--muted); font-size: 12px; }
table.compact td, table.compact th { padding: 4px 8px; font-size: 13px; }
th.group { text-align: center; border-bottom: 1px solid var(--line); }
th.group, .group-start { border-left: 1px solid var(--line); }
table.privacy th { vertical-align: bottom; }
table.privacy td:first-child { white-space: nowrap; }
table.size th { vertical-align: bottom; }
td.num .wrap { white-space: normal; }
ol.footnotes { margin: 6px 0 0; padding-left: 20px; color: var(--muted); font-size: 13px; }
sup.fn { color: var(--warn); font-weight: 700; margin-left: 1px; }
.ci { color: var(--muted); font-size: 0.9em; }
table.stack .ci, table.stack .gate { display: block; }
td .gate { display: block; margin-top: 2px; }
.reduced { color: var(--warn); font-weight: 600; }
p.settings { margin: 4px 0 8px; font-size: 13px; color: var(--muted); }
table.index th { white-space: normal; vertical-align: bottom; }
table.index td.pipeline { min-width: 220px; }
table.index td.model { min-width: 150px; }
.pill { display: inline-block; padding: 1px 10px; border-radius: 999px; font-weight: 700; font-size: 12px;
  letter-spacing: .03em; white-space: nowrap; }
.pill.pass { color: var(--pass); background: var(--pass-bg); }
.pill.fail { color: #fff; background: var(--fail); }
.pill.none { color: var(--none); background: var(--none-bg); }
.pill.warn { color: #7d4e00; background: var(--warn-bg); border: 1px solid #f2cc60; }
tr.failed td { background: #fff5f4; }
.untrusted { color: var(--warn); font-weight: 700; cursor: help; }
figure { margin: 12px 0 4px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 8px; }
figcaption { margin-top: 6px; color: var(--muted); font-size: 13px; }
.note { color: var(--muted); font-style: italic; }
.flag { margin: 10px 0; padding: 12px 16px; border: 1px solid var(--line); border-left: 5px solid var(--warn);
  border-radius: 8px; background: #fffdf3; }
.flag.masking { border-left-color: var(--fail); background: #fffafa; }
.flag .head { font-weight: 600; }
.flag .evidence { margin-top: 4px; }
details { margin: 12px 0; }
details summary { cursor: pointer; color: var(--accent); font-weight: 600; }
pre { background: var(--zebra); border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow-x: auto;
  font-size: 12px; line-height: 1.45; }
.scroll { overflow-x: auto; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; text-align: center; }
a { color: var(--accent); }
@media (max-width: 800px) { main { margin: 0; border-radius: 0; padding: 20px 16px 32px; } }
@media print { body { background: #fff; } main { box-shadow: none; margin: 0; max-width: none; } }
"""


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def pill(passed: bool | None) -> str:
    if passed is None:
        return '<span class="pill none">UNDECIDED</span>'
    return '<span class="pill pass">PASS</span>' if passed else '<span class="pill fail">FAIL</span>'


def html_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
    css: str = "",
) -> str:
    """``rows`` hold HTML already escaped by the caller; ``numeric`` columns are right-aligned."""
    numeric = set(numeric)
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        klass = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{klass}>{cells}</tr>")
    klass = f' class="{css}"' if css else ""
    return (
        f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


class Footnotes(Notes):
    """Footnotes under an HTML table: ``<sup>n</sup>`` marks, the reasons as an ordered list."""

    def mark(self, text: str) -> str:
        return f'<sup class="fn">{self.number(text)}</sup>'

    def html(self) -> str:
        if not self.texts:
            return ""
        return '<ol class="footnotes">' + "".join(f"<li>{esc(text)}</li>" for text in self.texts) + "</ol>"


def gate_badges(status: GateStatus, notes: Footnotes | None = None) -> str:
    """The one rendering of a gate's status in HTML: its PASS/FAIL pill, then UNTRUSTED, INVALID or MISSING and the
    reason, as a footnote mark when ``notes`` collects them, else as a line under the pills."""
    passed = {"pass": True, "fail": False}.get(status.result)
    html = pill(passed)
    if status.warning:
        html += f' <span class="pill warn">{esc(status.warning.upper())}</span>'
        html += notes.mark(status.reason) if notes is not None else f'<span class="detail">{esc(status.reason)}</span>'
    return html



def value_cell(row: Row | None, notes: Footnotes | None = None, untrusted: bool = False, gate: str = "") -> str:
    """A value and its 95% interval (``66.0% [52.2, 77.6]``, the interval in a span that narrow tables put on its
    own line), n on hover; ``gate``: the badges of a gate on this value; ``untrusted``: the value of a model
    flagged for gradient masking, marked ⚠ with the reason as a footnote."""
    if row is None:
        return '<span class="note">—</span>' + (f" {gate}" if gate else "")
    if row.unresolvable:
        text = f'<span class="note wrap">{NOT_RESOLVABLE}</span>'
        return text + (notes.mark(row.note) if notes is not None and row.note else "")
    text = esc(fmt_value(row.value, row.metric))
    if untrusted and not gate:
        mark = notes.mark(MASKED_NOTE.format(role=row.model)) if notes is not None else ""
        text += f' <span class="untrusted" title="{esc(MASKED_NOTE.format(role=row.model))}">⚠{mark}</span>'
    if row.ci95 is not None and row.value is not None:
        text += f' <span class="ci">{esc(fmt_interval(row.ci95, row.metric))}</span>'
    if row.n is not None:
        text = f'<span title="n = {row.n}">{text}</span>'
    if gate:
        text += f'<span class="gate">{gate}</span>'
    return text


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{content}\n</section>'


def _figure(png: bytes | None, alt: str, caption: str, missing: str) -> str:
    if png is None:
        return f'<p class="note">{esc(missing)}</p>'
    return f'<figure><img alt="{esc(alt)}" src="{data_uri(png)}"><figcaption>{esc(caption)}</figcaption></figure>'
