"""index.html: the demo's index page, linking every report. Each pipeline takes two lines, teacher above student, so
their numbers (each with its 95% interval) sit side by side; pipelines measuring the same things share a table (the
robustness pipelines one, the privacy pipeline another), so no table carries a column of dashes for the others.

:func:`index_summary` gathers an entry's numbers from a :class:`~robustdistill.reports.data.Report`;
:func:`render_index_html` lays out the entries (an entry's ``summary`` may also hold plain numbers, the student's).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from robustdistill.reports.data import Report
from robustdistill.reports.html_page import Footnotes, _section, esc, page, pill, value_cell
from robustdistill.reports.records import Row, fmt_value, is_fraction, to_float
from robustdistill.reports.status import reduced_note
from robustdistill.reports.sections.diffusion import speed_cell

ROLES = ("teacher", "student")
SPEED = "samples_per_second"
# Words of a metric name that say its value is not a fraction. Matched as whole words of the snake_case name, so
# an attack called "cw-linf" still reads as an accuracy while "median_linf" does not.
NOT_FRACTIONS = frozenset({"auc", "l2", "linf", "norm", "loss", "time", "seconds", "eps", "dist", "distance", "count", "n",
                           "queries", "steps"})
#: The membership-inference AUCs shown, per member set, and the attacks' names in the column titles.
MIA_VIEWS = {"auc": "own members", "teacher_members_auc": "teacher's members"}
MIA_NAMES = {"mia-lira": "LiRA", "mia-loss": "Loss attack", "mia-confidence": "Confidence attack"}
#: A language-model run's columns: metric -> column (transfer: the teacher's suffixes, on the student).
LANGUAGE_COLUMNS = {"refusal_rate": "refusal rate", "asr": "GCG ASR", "transfer_asr": "transfer ASR",
                    "alo_asr": "ALO-ASR", "loss_auc": "MIA AUC (teacher's members)"}
#: A diffusion run's columns (the report has every attack; the index the loss attack and the one that applies to a
#: one-step student).
DIFFUSION_COLUMNS = {"class_accuracy": "class accuracy", "frechet_distance": "Fréchet distance",
                     "samples_per_second": "samples / s", "loss_auc": "MIA loss AUC",
                     "nearest_auc": "MIA nearest-sample AUC"}
#: An unlearning run's columns: the class-forgetting pair's (teacher: before, student: after).
UNLEARNING_COLUMNS = {"forget_accuracy": "forget accuracy", "retain_accuracy": "retained accuracy",
                      "samples_per_second": "samples / s"}


def fmt_summary(key: str, value: Any) -> str:
    """A plain index summary value: fractions (accuracy-like names, or any value in [0, 1] whose name does not say
    it is a distance, loss, time or count) as percentages, the rest as numbers."""
    number = to_float(value)
    if number is None or isinstance(value, bool):
        return fmt_value(value, key)
    words = set(re.split(r"[_\s]+", key.lower()))
    if is_fraction(key) or (0.0 <= number <= 1.0 and not words & NOT_FRACTIONS):
        return fmt_value(number, "accuracy")
    return fmt_value(number, key)


def _cell(row: Row) -> dict[str, Any]:
    return {"value": row.value, "ci95": list(row.ci95) if row.ci95 else None, "metric": row.metric, "n": row.n}


def index_summary(report: Report) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """Column -> role -> ``{"value", "ci95", "metric", "n"}`` for the teacher and the student: clean accuracy, robust
    accuracy per attack (reduced ones labelled so), a membership-inference attack's AUC on each member set (the
    teacher's own leakage among them); and the one-line notes on reduced attacks."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    reduced: list[str] = []
    for key, _, entry in report.accuracy_entries():
        cells = {role: _cell(row) for role, row in entry.cells.items() if role in ROLES and row.value is not None}
        if cells and key not in summary:
            summary[key] = cells
            if entry.reduced:
                reduced.append(reduced_note(entry.label, entry.reduced))
    # One membership-inference attack, so the page stays readable at 1400 px: LiRA, the strongest, when the run has
    # it (the report itself shows every attack).
    probes = report.mia_probes()
    probe = next((name for name, kind in probes.items() if kind == "mia-lira"), next(iter(probes), None))
    for row in report.rows:
        if row.probe == probe and row.model in ROLES and row.metric in MIA_VIEWS and row.value is not None:
            attack = MIA_NAMES.get(probes[probe], probe)
            summary.setdefault(f"{attack} AUC ({MIA_VIEWS[row.metric]})", {}).setdefault(row.model, _cell(row))
    diffusion = bool(report_probes_of(report, "diffusion"))
    unlearning = any(row.metric in UNLEARNING_COLUMNS and row.metric != SPEED for row in report.rows)
    columns = UNLEARNING_COLUMNS if unlearning else DIFFUSION_COLUMNS if diffusion else LANGUAGE_COLUMNS
    for metric, column in columns.items():
        for row in report.rows:
            if row.metric == metric and row.model in ROLES and row.value is not None:
                summary.setdefault(column, {}).setdefault(row.model, _cell(row))
    # A backdoor-removal probe's models are not the teacher and student: its removal rate is shown on the student's
    # line under a column that names it.
    for row in report.rows:
        if row.metric == "removal_rate" and row.value is not None:
            summary.setdefault(f"{row.probe} removal ({row.model})", {}).setdefault("student", _cell(row))
    summary.update(_bias_columns(report))
    return summary, reduced


def report_probes_of(report: Report, family: str) -> set[str]:
    """The names of the report's probes of ``family`` (from its "sections")."""
    from robustdistill.reports.sections import section_specs

    return {probe for spec in section_specs(report) if spec.family == family for probe in spec.probes}


def _bias_columns(report: Report) -> dict[str, dict[str, dict[str, Any]]]:
    """Per bias type measured on its targeted task (the poisoned ones): the teacher's and student's targeted bias rate
    and the student's amplification of its teacher's rate."""
    columns: dict[str, dict[str, dict[str, Any]]] = {}
    amplification: dict[str, dict[str, dict[str, Any]]] = {}
    for row in report.rows:
        parts = row.metric.split("/")
        if row.model not in ROLES or row.value is None or len(parts) < 2 or parts[1] != "targeted":
            continue
        if len(parts) == 2:  # "<bias>/targeted": a rate (its name has no word the formatter reads as a fraction)
            columns.setdefault(f"{parts[0]} rate (targeted)", {})[row.model] = {**_cell(row), "metric": "bias_rate"}
        elif parts[2:] == ["amplification"]:
            amplification.setdefault(f"{parts[0]} amplification", {})[row.model] = _cell(row)
    # Amplification too only while the page stays readable at 1400 px (the report shows it for every type).
    return {**columns, **amplification} if len(columns) <= 2 else columns


def _value(found: Any, key: str, notes: Footnotes, untrusted: bool) -> str:
    """A cell: a value with its interval, or a plain number (an entry written by hand, or by an older version)."""
    if not isinstance(found, Mapping):
        return esc(fmt_summary(key, found))
    ci = found.get("ci95")
    ci95 = (float(ci[0]), float(ci[1])) if isinstance(ci, list | tuple) and len(ci) == 2 else None
    n = to_float(found.get("n"))
    row = Row("", str(found.get("role", "")), str(found.get("metric", key)), to_float(found.get("value")), ci95,
              int(n) if n is not None else None, {})
    if row.metric == SPEED:  # a timing in three significant figures, as the report's generation table shows it
        return speed_cell(row)
    return value_cell(row, notes, untrusted)


def _columns(entry: Mapping[str, Any]) -> tuple[str, ...]:
    summary = entry.get("summary")
    return tuple(str(k) for k in summary) if isinstance(summary, Mapping) else ()


def _entry_rows(entry: Mapping[str, Any], columns: Sequence[str], notes: Footnotes) -> list[str]:
    """The entry's two lines: the report (its link, verdict and flags) spanning both, then per role its model and
    values."""
    name = esc(entry.get("name") or entry.get("report") or "?")
    link = entry.get("report")
    title = f'<a href="{esc(link)}"><strong>{name}</strong></a>' if link else f"<strong>{name}</strong>"
    passed = entry.get("passed")
    flags = to_float(entry.get("flags"))
    flag_text = ""
    if flags:
        flag_text = f' <span class="pill warn" title="see the report\'s Flags section">⚠ {int(flags)} flags</span>'
    summary = entry.get("summary") if isinstance(entry.get("summary"), Mapping) else {}
    masked = set(entry.get("masked") or ())
    klass = ' class="failed"' if passed is False else ""
    lines = []
    for i, role in enumerate(ROLES):
        head = (f'<td rowspan="2" class="pipeline">{title}<div>{pill(passed if isinstance(passed, bool) else None)}'
                f"{flag_text}</div></td>" if i == 0 else "")
        cells = []
        for column in columns:
            found = summary.get(column)
            if isinstance(found, Mapping) and role in found:
                robust = column != "clean" and " AUC (" not in column
                cells.append(_value({**found[role], "role": role}, column, notes, robust and role in masked))
            elif not isinstance(found, Mapping) and found is not None and role == "student":
                cells.append(_value(found, column, notes, False))
            else:
                cells.append('<span class="note">—</span>')
        model = f'<span class="note">{role}</span> {esc(entry.get(role, "—"))}'
        values = "".join(f'<td class="num">{c}</td>' for c in cells)
        lines.append(f'<tr{klass}>{head}<td class="model">{model}</td>{values}</tr>')
    return lines


def render_index_html(entries: Sequence[Mapping[str, Any]], title: str) -> str:
    """The demo's index: per pipeline its teacher and student side by side, linking its report.html."""
    tables: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for entry in entries:
        tables.setdefault(_columns(entry), []).append(entry)
    notes = Footnotes()
    content = []
    for columns, group in tables.items():
        head = "".join(f'<th class="num">{esc(c)}</th>' for c in columns)
        body = "".join(line for entry in group for line in _entry_rows(entry, columns, notes))
        content.append(
            f'<div class="scroll"><table class="index stack"><thead><tr><th>Pipeline</th><th>Model</th>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>"
        )
    reduced = list(dict.fromkeys(note for entry in entries for note in entry.get("notes") or ()))
    content.append(notes.html())
    content += [f'<p class="note reduced">⚠ {esc(text)}</p>' for text in reduced]
    content.append(
        '<p class="note">Each value is followed by its 95% confidence interval; percentages are accuracies or rates '
        "(refusals, attack success, a bias in the answers), amplification a student's bias rate over its teacher's, AUCs are membership-inference attack AUCs (0.5: no measurable leakage). A flag "
        "count above zero means a check "
        "(e.g. gradient masking) fired: read that report's warning.</p>"
    )
    return index_page(title, entries, "robustdistill", "report", _section("reports", "Reports", "\n".join(content)))


def index_page(title: str, entries: Sequence[Mapping[str, Any]], eyebrow: str, noun: str, section: str,
               tail: str = "") -> str:
    """An index page: the header (how many entries, how many passed), the section, the render time, and ``tail``
    (e.g. a script)."""
    n_pass = sum(1 for e in entries if e.get("passed") is True)
    body = (
        f'<header><p class="eyebrow">{esc(eyebrow)}</p><h1>{esc(title)}</h1>'
        f'<p class="sub">{len(entries)} {noun}{"s" if len(entries) != 1 else ""} · {n_pass} passed</p></header>'
        + section
        + f"<footer>rendered {esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}</footer>"
        + tail
    )
    return page(title, body)


__all__ = ["fmt_summary", "index_summary", "render_index_html"]
