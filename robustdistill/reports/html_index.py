"""index.html: the demo's index page, one row per audited student linking its report.html, with the students'
summary values formatted by :func:`fmt_summary`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from robustdistill.reports.html_page import _section, esc, html_table, page, pill
from robustdistill.reports.records import fmt_value, is_fraction, to_float


# Words of a metric name that say its value is not a fraction. Matched as whole words of the snake_case name, so
# an attack called "cw-linf" still reads as an accuracy while "median_linf" does not.
NOT_FRACTIONS = frozenset({"auc", "l2", "linf", "norm", "loss", "time", "seconds", "eps", "dist", "distance", "count", "n",
                           "queries", "steps"})


def fmt_summary(key: str, value: Any) -> str:
    """An index summary value: fractions (accuracy-like names, or any value in [0, 1] whose name does not say it
    is a distance, loss, time or count) as percentages, the rest as numbers."""
    number = to_float(value)
    if number is None or isinstance(value, bool):
        return fmt_value(value, key)
    words = set(re.split(r"[_\s]+", key.lower()))
    if is_fraction(key) or (0.0 <= number <= 1.0 and not words & NOT_FRACTIONS):
        return fmt_value(number, "accuracy")
    return fmt_value(number, key)


def render_index_html(entries: Sequence[Mapping[str, Any]], title: str) -> str:
    """The demo's index: one row per audited student, linking its report.html."""
    metrics: list[str] = []
    for entry in entries:
        summary = entry.get("summary")
        if isinstance(summary, Mapping):
            metrics += [str(k) for k in summary if str(k) not in metrics]
    header = ["Report", "Teacher", "Student", "Verdict", "Flags", *map(esc, metrics)]
    rows, classes = [], []
    for entry in entries:
        name = esc(entry.get("name") or entry.get("report") or "?")
        link = entry.get("report")
        cell = f'<a href="{esc(link)}"><strong>{name}</strong></a>' if link else f"<strong>{name}</strong>"
        passed = entry.get("passed")
        flags = to_float(entry.get("flags"))
        flag_text = '<span class="note">0</span>'
        if flags:
            flag_text = f'<span class="pill warn" title="see the report\'s Flags section">⚠ {int(flags)}</span>'
        summary = entry.get("summary") if isinstance(entry.get("summary"), Mapping) else {}
        values = [esc(fmt_summary(m, summary.get(m))) for m in metrics]
        rows.append(
            [
                cell,
                esc(entry.get("teacher", "—")),
                esc(entry.get("student", "—")),
                pill(passed if isinstance(passed, bool) else None),
                flag_text,
                *values,
            ]
        )
        classes.append("failed" if passed is False else "")
    n_pass = sum(1 for e in entries if e.get("passed") is True)
    body = (
        f'<header><p class="eyebrow">robustdistill</p><h1>{esc(title)}</h1>'
        f'<p class="sub">{len(entries)} report{"s" if len(entries) != 1 else ""} · {n_pass} passed</p></header>'
        + _section(
            "reports",
            "Reports",
            html_table(header, rows, numeric=range(5, len(header)), row_classes=classes)
            + '<p class="note">Summary values are the student\'s; percentages are accuracies. A flag count '
            "above zero means a check (e.g. gradient masking) fired: read that report's warning.</p>",
        )
        + f"<footer>rendered {esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}</footer>"
    )
    return page(title, body)
