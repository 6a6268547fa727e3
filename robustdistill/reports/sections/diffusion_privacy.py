"""The diffusion-privacy group: membership inference against the teacher's training images (the diffusion-mia
probe) - a table per probe (model x attack: the timestep chosen on the calibration half, AUC, TPR at 1% and 0.1%
FPR, balanced accuracy at the calibrated threshold) and the loss attack's AUC by timestep, one line per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, order_roles
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register, section_specs

if TYPE_CHECKING:
    from robustdistill.reports.data import Report

GROUP = "diffusion-privacy"
PROBE = "diffusion-mia"
TITLE = "Membership inference (diffusion)"
PLOT_KEY = "diffusion-mia-by-t"
ATTACKS = {"loss": "loss at t (Matsumoto et al. 2023)", "pia": "PIA (Kong et al. 2024)",
           "secmi": "SecMI (Duan et al. 2023)", "nearest": "nearest sample (GAN-Leaks)"}
COLUMNS = {"auc": "AUC", "tpr_at_1pct_fpr": "TPR @ 1% FPR", "tpr_at_0_1pct_fpr": "TPR @ 0.1% FPR",
           "accuracy": "balanced accuracy"}
HEADER = ["model", "attack", "t", *COLUMNS.values()]
INTRO = ("Every model is attacked with the images it was trained on as members (a one-step student distilled without "
         "data: its teacher's) and images of the same data never trained on as non-members (as many of each). Each attack chooses its timestep and threshold on one half of them "
         "(calibration) and is scored on the other half, so no number here was tuned on the points it reports. AUC "
         "0.5 is guessing. The white-box scores (loss, PIA, SecMI) need the model's noise prediction at any "
         "timestep: a one-step generator has none, so it is attacked through its samples (nearest sample).")
PLOT_CAPTION = ("AUC of the loss attack at each timestep, on the evaluation half (shown, not used to choose t); the "
                "band is the 95% interval, the dashed line chance.")


def probe_rows(report: Report, probes: Sequence[str] = ()) -> list[Row]:
    names = set(probes) or {PROBE}
    return [r for r in report.rows if r.probe in names]


def report_probes(report: Report) -> list[str]:
    names = [p for spec in section_specs(report) if spec.group == GROUP for p in spec.probes]
    return list(dict.fromkeys(r.probe for r in probe_rows(report, names)))


def sweep(rows: Sequence[Row]) -> dict[str, list[tuple[int, Row]]]:
    """role -> [(t, row of loss_auc_t<t>)] sorted by t, for the rows with a value."""
    curves: dict[str, list[tuple[int, Row]]] = {}
    for row in rows:
        if row.metric.startswith("loss_auc_t") and row.value is not None:
            curves.setdefault(row.model, []).append((int(row.metric.removeprefix("loss_auc_t")), row))
    return {role: sorted(curves[role], key=lambda item: item[0]) for role in order_roles(curves)}


def sweep_png(report: Report) -> bytes | None:
    from robustdistill.reports.plots_diffusion import auc_by_timestep

    curves = sweep(probe_rows(report, report_probes(report)))
    return auc_by_timestep(curves) if curves else None


def _table(rows: Sequence[Row], probe: str, cell) -> list[list[str]]:
    by: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        if row.probe != probe:
            continue
        attack, _, metric = row.metric.partition("_")
        if attack in ATTACKS and metric in COLUMNS:
            by.setdefault((row.model, attack), {})[metric] = row
    out = []
    for role in order_roles({model for model, _ in by}):
        for attack in ATTACKS:
            metrics = by.get((role, attack))
            if metrics is None:
                continue
            first = next(iter(metrics.values()))
            t = first.params.get("t")
            out.append([role, ATTACKS[attack], "—" if t is None else str(t), *(cell(metrics.get(c)) for c in COLUMNS)])
    return out


def scope(rows: Sequence[Row], probe: str) -> str:
    """What the probe's members are, when restricted to some classes (e.g. the class a defence forgot)."""
    for row in rows:
        if row.probe == probe and isinstance(row.params.get("classes"), list):
            classes = ", ".join(str(c) for c in row.params["classes"])
            members, others = row.params.get("members"), row.params.get("nonmembers")
            return (f"Members and non-members of class{'es' if len(row.params['classes']) > 1 else ''} {classes} "
                    f"only ({members} and {others}).")
    return ""


def _not_applicable(row: Row | None) -> bool:
    return row is not None and row.value is None and row.note.startswith("not applicable")


def html(ctx: Context) -> HtmlParts:
    rows = probe_rows(ctx.report, ctx.spec.probes)
    if not rows:
        return []
    content = [f"<p>{esc(INTRO)}</p>"]
    for probe in dict.fromkeys(r.probe for r in rows):
        notes = Footnotes()

        def cell(row: Row | None) -> str:
            if _not_applicable(row):
                return '<span class="note">n/a</span>' + notes.mark(row.note)
            return value_cell(row, notes)

        body = [[esc(c) for c in line[:3]] + line[3:] for line in _table(rows, probe, cell)]
        said = scope(rows, probe)
        content += [f"<h3>{esc(probe)}</h3>", f"<p>{esc(said)}</p>" if said else "",
                    html_table(HEADER, body, numeric=range(2, len(HEADER))), notes.html()]
    content.append(_figure(ctx.pngs.get(PLOT_KEY), "Loss attack AUC by timestep", PLOT_CAPTION,
                           "No timestep sweep: no model had the loss attack's values."))
    content.append(f'<p class="note">{esc(INTERVALS)}</p>')
    return [(GROUP, TITLE, _section(GROUP, TITLE, "\n".join(content)))]


def markdown(ctx: Context) -> list[str]:
    rows = probe_rows(ctx.report, ctx.spec.probes)
    if not rows:
        return []
    out = [f"## {TITLE}", "", INTRO, ""]
    for probe in dict.fromkeys(r.probe for r in rows):
        notes = md_page.Footnotes()

        def cell(row: Row | None) -> str:
            if _not_applicable(row):
                return "n/a" + notes.mark(row.note)
            return md_page.value_text(row, notes)

        said = scope(rows, probe)
        out += [f"### {probe}", ""] + ([said, ""] if said else [])
        out += md_page.table(HEADER, _table(rows, probe, cell), "llr" + "r" * len(COLUMNS))
        out += [""] + notes.lines()
    if PLOT_KEY in ctx.links:
        out += [f"![Loss attack AUC by timestep]({ctx.links[PLOT_KEY]})", "", PLOT_CAPTION, ""]
    return out + [INTERVALS_MD, ""]


register(Section(GROUP, "membership inference (diffusion)", 19, html, markdown))
