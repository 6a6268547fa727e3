"""The unlearning group: what an unlearning defence removed and what it kept, the model before the defence (the
teacher) beside the model after it (the student).

- class-forgetting (SFD): forget accuracy (samples asked for the forgotten class that a classifier still reads as
  it), the rate they are read as the override class, accuracy and Fréchet distance on the remaining classes, and
  samples per second - a table per probe and before/after sample grids (one row per class; the forgotten class's
  row is marked).
- backdoor-removal (SKD-CAG): per model, the attack success on triggered prompts, the false-trigger rate and the
  prompt accuracy on clean ones; for the defended model, the removal rate and the clean-prompt fidelity (classifier
  agreement, pixel change) against the backdoored one - a table per probe and grids of the same prompts, clean and
  triggered, per model (the samples showing the backdoor target framed red).

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
from robustdistill.reports.examples import inside_run
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

BACKDOOR_METRICS = {"attack_success_rate": "attack success", "false_trigger_rate": "false triggers",
                    "prompt_accuracy": "prompt accuracy", "removal_rate": "removal rate",
                    "clean_agreement": "clean agreement", "clean_pixel_distance": "clean change",
                    "triggered_pixel_distance": "triggered change"}
BACKDOOR_INTRO = (
    "Each model draws the same prompts twice from the same noise: as written, and with the backdoor's trigger in "
    "front. A detector of the backdoor's target (fitted on real digits; it flags at most the stated share of them) "
    "marks the samples that show it. Attack success is the share of triggered samples that show it (want: high for "
    "the backdoored model, near its false-trigger rate after a defence); false triggers, the share of clean-prompt "
    "samples that show it; prompt accuracy, the share the digits classifier reads as the digit the prompt names. "
    "The removal rate is the share of the samples that showed it before the defence and no longer do, on the same "
    "prompt and noise. Fidelity: how often the digits classifier reads a clean prompt's sample as the same digit as "
    "before the defence (clean agreement), and how far its pixels moved (clean and triggered change: root-mean-square, "
    "0 to 1); a defence should move the triggered samples, not the clean ones.")
BACKDOOR_CAPTION = ("The same prompts from the same noise, as written (top) and with the trigger (bottom), per "
                    "model; a red frame: the sample shows the backdoor's target.")
BACKDOOR_ROWS = {0: "prompt", 1: "trigger + prompt"}


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


def backdoor_probes(report: Report, names: Sequence[str] = ()) -> list[str]:
    wanted = set(names) or {p for spec in section_specs(report) if spec.group == GROUP for p in spec.probes}
    return list(dict.fromkeys(r.probe for r in report.rows if r.probe in wanted and r.metric == "attack_success_rate"))


def _backdoor_cells(report: Report, probe: str) -> dict[str, dict[str, Row]]:
    cells: dict[str, dict[str, Row]] = {}
    for row in report.rows:
        if row.probe == probe and row.metric in BACKDOOR_METRICS:
            cells.setdefault(row.model, {})[row.metric] = row
    return cells  # the probe's order: clean, before, after


def _backdoor_panels(run_dir: Path, probe: str, roles: Sequence[str]) -> tuple[list[tuple], list[str]]:
    """(role, images, clean/triggered, shown-as-wrong) per role with a readable file; a note per role without."""
    import numpy as np

    panels, notes = [], []
    for role in roles:
        name = f"artifacts/backdoor-{probe}-{role}.npz"
        path = run_dir / name
        if not path.is_file() or not inside_run(path, run_dir):
            notes.append(f"no samples of {role}: {name} is missing")
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                images = np.clip(np.nan_to_num(np.asarray(npz["images"], dtype=np.float32)), 0.0, 1.0)
                triggered = np.asarray(npz["triggered"]).astype(int)
                flagged = np.asarray(npz["flagged"]).astype(bool)
        except Exception as error:  # noqa: BLE001 - an unreadable file is a note, not an error
            notes.append(f"no samples of {role}: {name} could not be read ({type(error).__name__})")
            continue
        if images.ndim != 4 or not len(images) == len(triggered) == len(flagged):
            notes.append(f"no samples of {role}: {name} holds images of shape {images.shape}")
            continue
        panels.append((role, images, triggered, np.where(flagged, -1, triggered)))  # -1: framed red
    return panels, notes


def grid_pngs(report: Report, run_dir: Path) -> dict[str, bytes | None]:
    """Per class-forgetting probe, the before/after grids' PNG; per backdoor-removal probe, the clean/triggered
    grids' (key SAMPLES_KEY + probe)."""
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
    for probe in backdoor_probes(report):
        panels, notes = _backdoor_panels(run_dir, probe, list(_backdoor_cells(report, probe)))
        for note in notes:
            log.warning("%s", note)
        pngs[SAMPLES_KEY + probe] = sample_grids(panels, f"Prompts with and without the trigger ({probe})",
                                                 row_names=BACKDOOR_ROWS)
    return pngs


def _backdoor_table(cells: dict[str, dict[str, Row]], cell) -> list[list[str]]:
    return [[role, *(cell(metrics.get(metric)) for metric in BACKDOOR_METRICS)] for role, metrics in cells.items()]


BACKDOOR_HEADER = ["model", *BACKDOOR_METRICS.values()]


def _backdoor_heading(probe: str, cells: dict[str, dict[str, Row]]) -> str:
    row = next((r for metrics in cells.values() for r in metrics.values()), None)
    if row is None:
        return probe
    return f"{probe} · {row.params.get('target')} backdoor, trigger {row.params.get('trigger')!r}"


def _forgetting_heading(probe: str, cells: dict[str, dict[str, Row]]) -> str:
    forget, override = forgotten(cells)
    said = f" · forgotten class {forget}" if forget is not None else ""
    return probe + said + (f" → override class {override}" if override is not None else "")


def html(ctx: Context) -> HtmlParts:
    probes = forgetting_probes(ctx.report, ctx.spec.probes)
    backdoors = backdoor_probes(ctx.report, ctx.spec.probes)
    if not probes and not backdoors:
        return []
    content = [f"<p>{esc(FORGETTING_INTRO)}</p>"] if probes else []
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
    if backdoors:
        content.append(f"<p>{esc(BACKDOOR_INTRO)}</p>")
    for probe in backdoors:
        cells = _backdoor_cells(ctx.report, probe)
        notes = Footnotes()
        body = [[esc(row[0])] + row[1:] for row in _backdoor_table(cells, lambda r: value_cell(r, notes))]
        content += [f"<h3>{esc(_backdoor_heading(probe, cells))}</h3>",
                    html_table(BACKDOOR_HEADER, body, numeric=range(1, len(BACKDOOR_HEADER))), notes.html(),
                    _figure(ctx.pngs.get(SAMPLES_KEY + probe), f"Clean and triggered samples of {probe}",
                            BACKDOOR_CAPTION, "No sample grids: the run saved no samples for this probe.")]
    content.append(f'<p class="note">{esc(INTERVALS)}</p>')
    return [(GROUP, TITLE, _section(GROUP, TITLE, "\n".join(c for c in content if c)))]


def markdown(ctx: Context) -> list[str]:
    probes = forgetting_probes(ctx.report, ctx.spec.probes)
    backdoors = backdoor_probes(ctx.report, ctx.spec.probes)
    if not probes and not backdoors:
        return []
    out = [f"## {TITLE}", ""] + ([FORGETTING_INTRO, ""] if probes else [])
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
    out += [BACKDOOR_INTRO, ""] if backdoors else []
    for probe in backdoors:
        cells = _backdoor_cells(ctx.report, probe)
        notes = md_page.Footnotes()
        out += [f"### {_backdoor_heading(probe, cells)}", ""]
        out += md_page.table(BACKDOOR_HEADER, _backdoor_table(cells, lambda r: md_page.value_text(r, notes)),
                             "l" + "r" * (len(BACKDOOR_HEADER) - 1))
        out += [""] + notes.lines()
        key = SAMPLES_KEY + probe
        out += ([f"![Clean and triggered samples of {probe}]({ctx.links[key]})", "", BACKDOOR_CAPTION, ""]
                if key in ctx.links else ["No sample grids: the run saved no samples for this probe.", ""])
    return out + [INTERVALS_MD, ""]


register(Section(GROUP, "unlearning", 19, html, markdown))
