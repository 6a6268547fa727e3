"""index.html of a sweep (``robustdistill sweep``): one line per audit - its student's numbers, each with its 95%
interval, the verdict, the student's size - in a table sorted by clicking a column's header, and, when students of
two or more sizes are known, their clean and robust accuracy against their parameter count.

An entry is the demo index's (:func:`robustdistill.reports.index_entry`) plus ``parameters``: the student's parameter
count (the size probe's row when the suite has one, else read from the checkpoint's safetensors header), or None.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from robustdistill.reports.html_index import _value, index_page
from robustdistill.reports.html_page import Footnotes, _section, esc, pill
from robustdistill.reports.records import to_float

#: Sorts the table by the clicked header's column: numbers by their data-sort value, text alphabetically; a second
#: click reverses. Plain JavaScript, no library (the page is self-contained).
SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const up = th.dataset.order !== "asc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = up ? "asc" : "desc";
  const key = row => { const v = row.cells[column].dataset.sort; return v === undefined ? null : v; };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || x === "") return 1; if (y === null || y === "") return -1;
    const nx = Number(x), ny = Number(y);
    const order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
    return up ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
</script>"""


def student_columns(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every column any entry has a student value for, in first-seen order."""
    columns: dict[str, None] = {}
    for entry in entries:
        for column, cells in (entry.get("summary") or {}).items():
            if isinstance(cells, Mapping) and "student" in cells:
                columns[column] = None
    return list(columns)


def _number(found: Any) -> float | None:
    return to_float(found.get("value")) if isinstance(found, Mapping) else to_float(found)


def _row(entry: Mapping[str, Any], columns: Sequence[str], notes: Footnotes) -> str:
    name = esc(entry.get("name") or "?")
    link = entry.get("report")
    title = f'<a href="{esc(link)}"><strong>{name}</strong></a>' if link else f"<strong>{name}</strong>"
    passed = entry.get("passed")
    verdict = "1" if passed is True else "0" if passed is False else ""
    parameters = entry.get("parameters")
    cells = [f'<td data-sort="{esc(entry.get("name") or "")}">{title}</td>',
             f'<td data-sort="{verdict}">{pill(passed if isinstance(passed, bool) else None)}</td>',
             f'<td data-sort="{esc(entry.get("student") or "")}">{esc(entry.get("student", "—"))}</td>',
             f'<td class="num" data-sort="{parameters if parameters is not None else ""}">'
             f'{f"{int(parameters):,}" if parameters is not None else "—"}</td>']
    summary = entry.get("summary") or {}
    masked = "student" in set(entry.get("masked") or ())
    for column in columns:
        found = (summary.get(column) or {}).get("student") if isinstance(summary.get(column), Mapping) else None
        if found is None:
            cells.append('<td class="num" data-sort=""><span class="note">—</span></td>')
            continue
        number = _number(found)
        robust = column != "clean" and " AUC (" not in column
        shown = _value({**found, "role": "student"}, column, notes, robust and masked)
        cells.append(f'<td class="num" data-sort="{"" if number is None else number}">{shown}</td>')
    return f"<tr>{''.join(cells)}</tr>"


def render_sweep_index_html(entries: Sequence[Mapping[str, Any]], title: str, size_png: bytes | None = None) -> str:
    columns = student_columns(entries)
    notes = Footnotes()
    head = "".join(f'<th class="num" title="sort">{esc(c)}</th>' for c in ["parameters", *columns])
    body = "".join(_row(entry, columns, notes) for entry in entries)
    content = [
        '<p class="note">One line per audit, its student\'s numbers; click a column\'s header to sort by it.</p>',
        f'<div class="scroll"><table class="index sortable"><thead><tr><th title="sort">Audit</th>'
        f'<th title="sort">Verdict</th><th title="sort">Student</th>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div>",
        notes.html(),
    ]
    content += [f'<p class="note reduced">⚠ {esc(text)}</p>'
                for text in dict.fromkeys(note for entry in entries for note in entry.get("notes") or ())]
    if size_png is not None:
        data = base64.b64encode(size_png).decode()
        content.append(f'<figure><img alt="accuracy against size" src="data:image/png;base64,{data}">'
                       "<figcaption>Each student's clean and robust accuracy against its parameter count (the "
                       "bars: 95% intervals).</figcaption></figure>")
    content.append('<p class="note">Each value is followed by its 95% confidence interval; hover a value for n.</p>')
    return index_page(title, entries, "robustdistill sweep", "audit", _section("audits", "Audits", "\n".join(content)),
                      SORT_SCRIPT)


def size_points(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float, list[float] | None]]]:
    """Accuracy column -> [(parameters, value, ci95)] over the students with a known size: the clean accuracy and
    every robust accuracy column."""
    curves: dict[str, list[tuple[float, float, list[float] | None]]] = {}
    for entry in entries:
        parameters = entry.get("parameters")
        if parameters is None:
            continue
        for column, cells in (entry.get("summary") or {}).items():
            found = cells.get("student") if isinstance(cells, Mapping) else None
            if isinstance(found, Mapping) and str(found.get("metric")) in ("accuracy", "robust_accuracy"):
                value = _number(found)
                if value is not None:
                    curves.setdefault(column, []).append((float(parameters), value, found.get("ci95")))
    # a line needs two sizes: students all of one size have nothing to plot against it
    return {column: sorted(points) for column, points in curves.items() if len({x for x, _, _ in points}) >= 2}


__all__ = ["render_sweep_index_html", "size_points", "student_columns"]
