"""The pieces of report.md every section shares: table cells and tables (GitHub-flavoured Markdown), footnotes, a
value with its interval, and the one Markdown rendering of a gate's status. :mod:`robustdistill.reports.markdown`
and the sections (:mod:`robustdistill.reports.sections`) build report.md from these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustdistill.reports.records import NOT_RESOLVABLE, Row, fmt_ci
from robustdistill.reports.status import MASKED_NOTE, GateStatus, Notes

SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


class Footnotes(Notes):
    """Footnotes under a Markdown table: superscript marks, the reasons as numbered lines."""

    def mark(self, text: str) -> str:
        return str(self.number(text)).translate(SUPERSCRIPT)

    def lines(self) -> list[str]:
        """One paragraph per footnote (consecutive lines would run together in rendered Markdown)."""
        return [line for text in self.texts for line in (f"{self.mark(text)} {text}", "")]


def gate_text(status: GateStatus, notes: Footnotes | None = None) -> str:
    """The one rendering of a gate's status in Markdown: ``❌ FAIL ⚠️ untrusted`` and the reason (a footnote mark
    when ``notes`` collects them, else after a colon)."""
    text = {"pass": "✅ pass", "fail": "❌ FAIL", "undecided": "— undecided"}[status.result]
    if status.warning:
        text += f" ⚠️ {status.warning}"
        text += notes.mark(status.reason) if notes is not None else f": {status.reason}"
    return text


def value_text(row: Row | None, notes: Footnotes | None = None, untrusted: bool = False, gate: str = "") -> str:
    """A value with its 95% interval (``66.0% [52.2, 77.6]``); ``gate``: a gate's status on it; ``untrusted``: ⚠️
    and a footnote for a value of a model flagged for gradient masking."""
    if row is None:
        return "—" + (f" {gate}" if gate else "")
    if row.unresolvable:
        return NOT_RESOLVABLE + (notes.mark(row.note) if notes is not None and row.note else "")
    text = fmt_ci(row.value, row.ci95, row.metric)
    if untrusted and not gate:
        text += " ⚠️" + (notes.mark(MASKED_NOTE.format(role=row.model)) if notes is not None else "")
    return text + (f" {gate}" if gate else "")
