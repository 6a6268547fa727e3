"""The generation group: how good and how fast each diffusion model's class-conditional samples are (the
generation-quality probe) - a table per probe (steps, class accuracy, Fréchet distance, samples per second, each
with its 95% interval) and the models' sample grids side by side, e.g. the teacher's 50 DDIM steps beside its
one-step student's single step.

The grids are drawn from ``artifacts/samples-<probe>-<role>.npz`` (images, labels, predicted); a missing or
unreadable file costs its panel (with a note), never the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robustdistill.reports import md_page
from robustdistill.reports.examples import inside_run
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, fmt_params, order_roles, shared_params
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register, section_specs

if TYPE_CHECKING:
    from robustdistill.reports.data import Report

log = logging.getLogger(__name__)

GROUP = "generation"
PROBE = "generation-quality"
TITLE = "Generation quality"
#: Plot key of a probe's sample grids: SAMPLES_KEY + probe name.
SAMPLES_KEY = "samples:"
METRICS = {"class_accuracy": "class accuracy", "frechet_distance": "Fréchet distance",
           "samples_per_second": "samples / s"}
SPEED = "samples_per_second"
#: Per-row params: the settings line shows only what every row shares beyond these.
PER_ROW = ("steps", "generator", "n_real")
INTRO = ("Each model draws the same number of samples of every digit class. A digits classifier reads them: class "
         "accuracy is the fraction it assigns the class asked for (chance is 10%); the Fréchet distance compares "
         "its penultimate-layer features of the samples with those of the real evaluation images (0: same mean "
         "and covariance; lower is better; the FID recipe with a digits classifier in place of Inception, so the "
         "numbers compare models within this report, not with published FIDs). Samples per second were timed on "
         "the audit's device. In the grids each row is a class; a red frame marks a sample the classifier read as "
         "another class.")


def probe_rows(report: Report, probes: Sequence[str] = ()) -> list[Row]:
    """The rows of the group's probes; without names (a report.json from before "sections"), the default probe's."""
    names = set(probes) or {PROBE}
    return [r for r in report.rows if r.probe in names and r.metric in METRICS]


def report_probes(report: Report) -> list[str]:
    """The generation-quality probes of a whole report, in row order (for its plots)."""
    names = [p for spec in section_specs(report) if spec.group == GROUP for p in spec.probes]
    return list(dict.fromkeys(r.probe for r in probe_rows(report, names)))


def _cells(rows: Sequence[Row], probe: str) -> dict[str, dict[str, Row]]:
    """role -> metric -> row, roles in report order."""
    cells: dict[str, dict[str, Row]] = {}
    for row in rows:
        if row.probe == probe:
            cells.setdefault(row.model, {})[row.metric] = row
    return {role: cells[role] for role in order_roles(cells)}


def _steps(cells: dict[str, Row]) -> str:
    row = next(iter(cells.values()))
    steps, generator = row.params.get("steps"), row.params.get("generator")
    return f"{steps}" + (f" ({generator})" if generator else "") if steps is not None else "—"


def _heading_steps(cells: dict[str, Row]) -> str:
    """``50 steps (ddim)``, ``1 step (one-step)``."""
    row = next(iter(cells.values()))
    steps, generator = row.params.get("steps"), row.params.get("generator")
    if steps is None:
        return "steps not recorded"
    return f"{steps} step{'' if steps == 1 else 's'}" + (f" ({generator})" if generator else "")


def _settings(rows: Sequence[Row]) -> str:
    shared, _ = shared_params(list(rows), skip=PER_ROW)
    if isinstance(shared.get("classifier_sha256"), str):
        shared["classifier_sha256"] = shared["classifier_sha256"][:16]
    return fmt_params(shared)


def load_panels(run_dir: Path, probe: str, cells: dict[str, dict[str, Row]]) -> tuple[list[tuple], list[str]]:
    """(heading, images, labels, predicted) per role with a readable samples file, and a note per role without."""
    panels, notes = [], []
    for role, metrics in cells.items():
        name = f"artifacts/samples-{probe}-{role}.npz"
        path = run_dir / name
        if not path.is_file() or not inside_run(path, run_dir):
            notes.append(f"no samples of {role}: {name} is missing" + ("" if not path.exists() else
                                                                       " (or leads outside the run directory)"))
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                images = np.clip(np.nan_to_num(np.asarray(npz["images"], dtype=np.float32)), 0.0, 1.0)
                labels, predicted = np.asarray(npz["labels"]).astype(int), np.asarray(npz["predicted"]).astype(int)
        except Exception as error:  # noqa: BLE001 - an unreadable file is a note, not an error
            log.warning("cannot read %s: %s", path, error)
            notes.append(f"no samples of {role}: {name} could not be read ({type(error).__name__})")
            continue
        if images.ndim != 4 or not len(images) == len(labels) == len(predicted):
            notes.append(f"no samples of {role}: {name} holds images of shape {images.shape}")
            continue
        panels.append((f"{role} · {_heading_steps(metrics)}", images, labels, predicted))
    return panels, notes


def grid_pngs(report: Report, run_dir: Path) -> dict[str, bytes | None]:
    """Per probe of the group, its sample grids' PNG (key SAMPLES_KEY + probe; None without any samples). A
    model whose samples file is missing or unreadable is left out of its grid, with a warning."""
    from robustdistill.reports.plots_diffusion import sample_grids

    pngs: dict[str, bytes | None] = {}
    probes = report_probes(report)
    rows = probe_rows(report, probes)
    for probe in probes:
        panels, notes = load_panels(run_dir, probe, _cells(rows, probe))
        for note in notes:
            log.warning("%s", note)
        pngs[SAMPLES_KEY + probe] = sample_grids(panels, f"Class-conditional samples ({probe})")
    return pngs


def speed(number: float) -> str:
    """Samples per second in three significant figures, thousands separated (``9,100``, ``251``, ``3.46``)."""
    return f"{float(f'{number:.3g}'):,.0f}" if abs(number) >= 100 else f"{number:.3g}"


def speed_parts(row: Row | None) -> tuple[str, str]:
    """(value, interval) of a samples-per-second row: ``("9,100", "[8,190, 10,000]")``; the shared formatter's
    three decimals would read as precision a timing does not have."""
    if row is None or row.value is None:
        return "—", ""
    return speed(row.value), f"[{speed(row.ci95[0])}, {speed(row.ci95[1])}]" if row.ci95 else ""


def speed_cell(row: Row | None) -> str:
    value, interval = speed_parts(row)
    if row is None or row.value is None:
        return f'<span class="note">{value}</span>'
    ci = f' <span class="ci">{esc(interval)}</span>' if interval else ""
    return f'<span title="n = {esc(row.n)}">{esc(value)}{ci}</span>'


def speed_text(row: Row | None) -> str:
    return " ".join(p for p in speed_parts(row) if p)


def _table_rows(cells: dict[str, dict[str, Row]], cell, speed_of) -> list[list[str]]:
    return [[role, _steps(metrics), *(cell(metrics.get(metric)) for metric in METRICS if metric != SPEED),
             speed_of(metrics.get(SPEED))] for role, metrics in cells.items()]


HEADER = ["model", "steps", *METRICS.values()]
CAPTION = ("Samples of each class (rows) from each model, side by side; a red frame: the classifier read another "
           "class.")


def html(ctx: Context) -> HtmlParts:
    rows = probe_rows(ctx.report, ctx.spec.probes)
    if not rows:
        return []
    content = [f"<p>{esc(INTRO)}</p>"]
    settings = _settings(rows)
    if settings:
        content.append(f'<p class="settings">Settings: <span class="mono">{esc(settings)}</span>.</p>')
    for probe in dict.fromkeys(r.probe for r in rows):
        notes = Footnotes()
        body = [[esc(c) for c in row[:2]] + row[2:] for row in _table_rows(_cells(rows, probe),
                                                                           lambda r: value_cell(r, notes), speed_cell)]
        content += [f"<h3>{esc(probe)}</h3>", html_table(HEADER, body, numeric=range(1, len(HEADER))), notes.html(),
                    _figure(ctx.pngs.get(SAMPLES_KEY + probe), f"Sample grids of {probe}, one per model",
                            CAPTION, "No sample grids: the run saved no samples for this probe.")]
    content.append(f'<p class="note">{esc(INTERVALS)}</p>')
    return [(GROUP, TITLE, _section(GROUP, TITLE, "\n".join(content)))]


def markdown(ctx: Context) -> list[str]:
    rows = probe_rows(ctx.report, ctx.spec.probes)
    if not rows:
        return []
    settings = _settings(rows)
    out = [f"## {TITLE}", "", INTRO, ""] + ([f"Settings: {settings}.", ""] if settings else [])
    for probe in dict.fromkeys(r.probe for r in rows):
        notes = md_page.Footnotes()
        out += [f"### {probe}", ""] + md_page.table(
            HEADER, _table_rows(_cells(rows, probe), lambda r: md_page.value_text(r, notes), speed_text),
            "lr" + "r" * len(METRICS))
        out += [""] + notes.lines()
        key = SAMPLES_KEY + probe
        out += ([f"![Sample grids of {probe}]({ctx.links[key]})", "", CAPTION, ""] if key in ctx.links
                else ["No sample grids: the run saved no samples for this probe.", ""])
    return out + [INTERVALS_MD, ""]


register(Section(GROUP, "generation quality", 18, html, markdown))
