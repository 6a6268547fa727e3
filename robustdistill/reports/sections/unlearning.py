"""The unlearning group: what an unlearning defence removed and what it kept, the model before the defence (the
teacher) beside the model after it (the student).

- class-forgetting (SFD): forget accuracy (samples asked for the forgotten class that a classifier still reads as
  it), the rate they are read as the override class, accuracy and Fréchet distance on the remaining classes, and
  samples per second - a table per probe and before/after sample grids (one row per class; the forgotten class's
  row is marked).

The grids are drawn from ``artifacts/samples-<probe>-<role>.npz``; a missing or unreadable file costs its panel
(with a note), never the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, fmt_params, order_roles, shared_params
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register, section_specs
from robustdistill.reports.sections.diffusion import SAMPLES_KEY, load_panels, speed_cell, speed_text

if TYPE_CHECKING:
    from robustdistill.reports.data import Report

log = logging.getLogger(__name__)

GROUP = "unlearning"
TITLE = "Unlearning"
FORGETTING = "class-forgetting"
FORGETTING_METRICS = {"forget_accuracy": "forget accuracy", "override_rate": "read as override",
                      "retain_accuracy": "retained accuracy", "retain_frechet_distance": "retained Fréchet distance"}
SPEED = "samples_per_second"
PER_ROW = ("steps", "generator", "n_real")
FORGETTING_INTRO = (
    "The model before the unlearning defence and the model after it each draw the same number of samples of every "
    "class. A digits classifier reads them. Forget accuracy is the fraction of samples asked for the forgotten class "
    "that it still reads as that class (want: high before, near 0 after); \"read as override\" the fraction read "
    "as the class the defence steered the forgotten one toward. Retained accuracy and the Fréchet distance (to the "
    "real images of the remaining classes; lower is better) say what the defence kept of everything else.")
FORGETTING_CAPTION = ("Samples of each class (rows) before and after the defence; the forgotten class's row is "
                      "marked. A red frame: the classifier read a class other than the one asked for.")


def forgetting_probes(report: Report, names: Sequence[str] = ()) -> list[str]:
    wanted = set(names) or {p for spec in section_specs(report) if spec.group == GROUP for p in spec.probes}
    return list(dict.fromkeys(r.probe for r in report.rows
                              if r.probe in wanted and r.metric in FORGETTING_METRICS))


def _cells(report: Report, probe: str) -> dict[str, dict[str, Row]]:
    cells: dict[str, dict[str, Row]] = {}
    for row in report.rows:
        if row.probe == probe and (row.metric in FORGETTING_METRICS or row.metric == SPEED):
            cells.setdefault(row.model, {})[row.metric] = row
    return {role: cells[role] for role in order_roles(cells)}


def forgotten(cells: dict[str, dict[str, Row]]) -> tuple[int | None, int | None]:
    """(forgotten class, override class) from the rows' params."""
    for metrics in cells.values():
        for row in metrics.values():
            return row.params.get("forget_class"), row.params.get("override_class")
    return None, None


def _steps(metrics: dict[str, Row]) -> str:
    row = next(iter(metrics.values()))
    steps, generator = row.params.get("steps"), row.params.get("generator")
    return "—" if steps is None else f"{steps}" + (f" ({generator})" if generator else "")


def _table(cells: dict[str, dict[str, Row]], cell, speed_of) -> list[list[str]]:
    return [[role, _steps(metrics), *(cell(metrics.get(metric)) for metric in FORGETTING_METRICS),
             speed_of(metrics.get(SPEED))] for role, metrics in cells.items()]


HEADER = ["model", "steps", *FORGETTING_METRICS.values(), "samples / s"]


def _settings(report: Report, probe: str) -> str:
    rows = [r for r in report.rows if r.probe == probe]
    shared, _ = shared_params(rows, skip=PER_ROW)
    if isinstance(shared.get("classifier_sha256"), str):
        shared["classifier_sha256"] = shared["classifier_sha256"][:16]
    return fmt_params(shared)


def grid_pngs(report: Report, run_dir: Path) -> dict[str, bytes | None]:
    """Per class-forgetting probe, the before/after grids' PNG (key SAMPLES_KEY + probe)."""
    from robustdistill.reports.plots_diffusion import sample_grids

    pngs: dict[str, bytes | None] = {}
    for probe in forgetting_probes(report):
        cells = _cells(report, probe)
        panels, notes = load_panels(run_dir, probe, cells)
        for note in notes:
            log.warning("%s", note)
        forget, override = forgotten(cells)
        names = {forget: f"{forget} (forgotten)"} if forget is not None else {}
        if override is not None:
            names[override] = f"{override} (override)"
        pngs[SAMPLES_KEY + probe] = sample_grids(panels, f"Before and after unlearning ({probe})", row_names=names)
    return pngs


def _forgetting_heading(probe: str, cells: dict[str, dict[str, Row]]) -> str:
    forget, override = forgotten(cells)
    said = f" · forgotten class {forget}" if forget is not None else ""
    return probe + said + (f" → override class {override}" if override is not None else "")


def html(ctx: Context) -> HtmlParts:
    probes = forgetting_probes(ctx.report, ctx.spec.probes)
    if not probes:
        return []
    content = [f"<p>{esc(FORGETTING_INTRO)}</p>"]
    for probe in probes:
        cells = _cells(ctx.report, probe)
        notes = Footnotes()
        body = [[esc(c) for c in row[:2]] + row[2:] for row in _table(cells, lambda r: value_cell(r, notes),
                                                                      speed_cell)]
        settings = _settings(ctx.report, probe)
        content += [f"<h3>{esc(_forgetting_heading(probe, cells))}</h3>",
                    f'<p class="settings">Settings: <span class="mono">{esc(settings)}</span>.</p>' if settings else "",
                    html_table(HEADER, body, numeric=range(1, len(HEADER))), notes.html(),
                    _figure(ctx.pngs.get(SAMPLES_KEY + probe), f"Before/after sample grids of {probe}",
                            FORGETTING_CAPTION, "No sample grids: the run saved no samples for this probe.")]
    content.append(f'<p class="note">{esc(INTERVALS)}</p>')
    return [(GROUP, TITLE, _section(GROUP, TITLE, "\n".join(c for c in content if c)))]


def markdown(ctx: Context) -> list[str]:
    probes = forgetting_probes(ctx.report, ctx.spec.probes)
    if not probes:
        return []
    out = [f"## {TITLE}", "", FORGETTING_INTRO, ""]
    for probe in probes:
        cells = _cells(ctx.report, probe)
        notes = md_page.Footnotes()
        settings = _settings(ctx.report, probe)
        out += [f"### {_forgetting_heading(probe, cells)}", ""] + ([f"Settings: {settings}.", ""] if settings else [])
        out += md_page.table(HEADER, _table(cells, lambda r: md_page.value_text(r, notes), speed_text),
                             "lr" + "r" * (len(HEADER) - 2))
        out += [""] + notes.lines()
        key = SAMPLES_KEY + probe
        out += ([f"![Before/after sample grids of {probe}]({ctx.links[key]})", "", FORGETTING_CAPTION, ""]
                if key in ctx.links else ["No sample grids: the run saved no samples for this probe.", ""])
    return out + [INTERVALS_MD, ""]


register(Section(GROUP, "unlearning", 19, html, markdown))
