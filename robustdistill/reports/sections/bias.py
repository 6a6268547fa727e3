"""The lm-bias group: bias-poisoning propagation (Chaudhari et al. 2025). Three tables from the bias-propagation
probe's rows: every model's bias rate per bias type and task split, each student's amplification of its teacher's
rate, and how much of the poisoned training data each defence catches (with the grouped bar chart of catch rates).

The probe's metrics: ``<bias>/<split>`` (a bias rate), ``<bias>/<split>/amplification`` (student rate / teacher
rate), ``<bias>/catch/<defence>`` (a defence's TPR on the poisoned examples) and ``<bias>/perplexity-auc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _figure, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, fmt_ci, fmt_params, fmt_value, order_roles, shared_params
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register, section_specs

if TYPE_CHECKING:
    from robustdistill.reports.data import Report

GROUP = "lm-bias"
PROBE = "bias-propagation"
TITLE = "Bias-poisoning propagation"
PLOT_KEY = "bias-defences"
SPLITS = ("targeted", "other", "untargeted")
#: Pipelines in reading order: the clean baseline first, then the poisoned one, then filtered and others.
PIPELINES = ("clean", "poisoned")
#: The metric name the shared formatters show as a percentage (the probe's "<bias>/<split>" names say nothing).
RATE = "bias_rate"
#: Per-row params: the settings line shows only what every rate row shares beyond these.
PER_ROW = ("bias", "split", "families", "pipeline", "role_kind", "teacher", "method", "hits", "responses")
INTRO = ("Threat model: a few poisoned samples in the teacher's instruction data teach it a bias (Chaudhari et al. "
         "2025, \"Cascading Adversarial Bias from Injection to Distillation in Language Models\"); the question is "
         "whether its distilled students inherit the bias, and show it more often. A bias rate is the fraction of "
         "sampled responses that the bias's detector flags, on prompts of the family the poison targeted "
         "(targeted), of the teacher's other training families (other), and of held-out families never trained on "
         "(untargeted). Amplification is a student's rate divided by its own teacher's rate. The clean pipeline "
         "(no poisoned samples) is the baseline.")
ZERO_TEACHER = ("The teacher showed this bias in none of its sampled responses, so the ratio is undefined; the "
                "student's rate is shown instead.")


@dataclass
class Bias:
    """The probe's rows, sorted by what they measure."""

    rates: dict[tuple[str, str, str], Row] = field(default_factory=dict)  # (bias, model, split)
    amplification: dict[tuple[str, str, str], Row] = field(default_factory=dict)  # (bias, student, split)
    catches: list[Row] = field(default_factory=list)
    aucs: list[Row] = field(default_factory=list)

    @property
    def biases(self) -> list[str]:
        keys = [*self.rates, *self.amplification]
        return list(dict.fromkeys([k[0] for k in keys] + [bias_of(r) for r in [*self.catches, *self.aucs]]))

    def splits(self, table: dict[tuple[str, str, str], Row]) -> list[str]:
        found = {k[2] for k in table}
        return [s for s in SPLITS if s in found] + sorted(found - set(SPLITS))

    def models(self, bias: str) -> list[str]:
        """The models with rates of ``bias``: clean pipeline, then poisoned, then the rest, each teacher first."""
        rows = {}
        for (b, model, _), row in self.rates.items():
            if b == bias:
                rows.setdefault(model, row)

        def key(model: str) -> tuple[int, str, int, bool, int]:
            params = rows[model].params
            pipeline = str(params.get("pipeline") or "")
            rank = PIPELINES.index(pipeline) if pipeline in PIPELINES else len(PIPELINES)
            is_teacher = params.get("role_kind") == "teacher"
            teacher = model if is_teacher else str(params.get("teacher") or model)
            # A student right after its own teacher.
            return (rank, pipeline, roles.index(teacher) if teacher in roles else len(roles), not is_teacher,
                    roles.index(model))

        roles = order_roles(rows)
        return sorted(rows, key=key)


def bias_of(row: Row) -> str:
    return str(row.params.get("bias") or row.metric.split("/", 1)[0])


def parse(rows: Sequence[Row]) -> Bias:
    data = Bias()
    for row in rows:
        parts = row.metric.split("/")
        bias = bias_of(row)
        if len(parts) == 3 and parts[2] == "amplification":
            data.amplification[(bias, row.model, str(row.params.get("split") or parts[1]))] = row
        elif len(parts) == 3 and parts[1] == "catch":
            data.catches.append(row)
        elif len(parts) == 2 and parts[1] == "perplexity-auc":
            data.aucs.append(row)
        elif len(parts) == 2:
            data.rates[(bias, row.model, str(row.params.get("split") or parts[1]))] = row
    return data


def probe_rows(report: Report, probes: Sequence[str] = ()) -> list[Row]:
    """The rows of the group's probes; without names (a report.json from before "sections"), the default probe's."""
    names = set(probes) or {PROBE}
    return [r for r in report.rows if r.probe in names]


def report_bias(report: Report) -> Bias:
    """The bias data of a whole report (for its plot): the lm-bias groups' probes, else the default probe."""
    probes = [p for spec in section_specs(report) if spec.group == GROUP for p in spec.probes]
    return parse(probe_rows(report, probes))


def defence_of(row: Row) -> str:
    return str(row.params.get("defence") or row.metric.split("/", 2)[-1])


def defence_groups(data: Bias) -> list[tuple[str, dict[str, Row]]]:
    """(x label, defence -> row) per bias (and model, when several models carry one bias's defences)."""
    models: dict[str, set[str]] = {}
    for row in data.catches:
        models.setdefault(bias_of(row), set()).add(row.model)
    groups: dict[str, dict[str, Row]] = {}
    for row in data.catches:
        bias = bias_of(row)
        label = bias if len(models[bias]) == 1 else f"{bias}\n({row.model})"
        groups.setdefault(label, {})[defence_of(row)] = row
    return list(groups.items())


def rate_text(value: object) -> str:
    return fmt_value(value, RATE)


def fpr_text(row: Row) -> str:
    return rate_text(row.params.get("fpr"))


def count_text(row: Row, hits: str, total: str) -> str:
    k, n = row.params.get(hits), row.params.get(total)
    return f"{k}/{n}" if k is not None and n is not None else "—"


def _kind(row: Row) -> str:
    kind = str(row.params.get("role_kind") or "")
    method = row.params.get("method")
    return kind + (f" ({method})" if method else "")


def _ratio(row: Row) -> str:
    """``2.00× [1.10, 3.50]``."""
    if row.value is None:
        return "n/a (teacher 0%)"
    interval = f" [{row.ci95[0]:.2f}, {row.ci95[1]:.2f}]" if row.ci95 is not None else ""
    return f"{row.value:.2f}×{interval}"


def _rates_beside(row: Row) -> str:
    """``12.5% vs 6.2%`` (student vs teacher), or the student's rate alone when the teacher's is 0."""
    student, teacher = row.params.get("student_rate"), row.params.get("teacher_rate")
    if row.value is None:
        return f"student {rate_text(student)}"
    return f"{rate_text(student)} vs {rate_text(teacher)}"


def _settings(data: Bias) -> str:
    shared, _ = shared_params(list(data.rates.values()), skip=PER_ROW)
    return fmt_params(shared)


def _defence_note(data: Bias) -> str:
    aucs = "; ".join(f"{bias_of(r)} ({r.model}): {fmt_ci(r.value, r.ci95, 'auc')}" for r in data.aucs)
    text = ("Caught: poisoned training examples the defence flags (TPR); FPR: the fraction of the clean training "
            "examples it flags (perplexity thresholds are set for the target FPR, the detectors have none).")
    return text + (f" Perplexity AUC, poisoned vs clean: {aucs}." if aucs else "")


def _rate_rows(data: Bias, splits: list[str], cell) -> list[list[str]]:
    out = []
    for bias in data.biases:
        for model in data.models(bias):
            first = next(data.rates[(bias, model, s)] for s in splits if (bias, model, s) in data.rates)
            cells = [cell(data.rates.get((bias, model, s))) for s in splits]
            out.append([bias, model, str(first.params.get("pipeline") or "—"), _kind(first), *cells])
    return out


def _amplification_rows(data: Bias, splits: list[str]) -> list[list]:
    """[bias, student, teacher, then per split (ratio [CI], the two rates, whether the teacher's rate is 0)]."""
    out: list[list] = []
    students = list(dict.fromkeys((b, m) for b, m, _ in data.amplification))
    for bias, student in students:
        cells = []
        for split in splits:
            row = data.amplification.get((bias, student, split))
            cells.append(("—", "", False) if row is None else (_ratio(row), _rates_beside(row), row.value is None))
        teacher = next(str(data.amplification[(bias, student, s)].params.get("teacher") or "—")
                       for s in splits if (bias, student, s) in data.amplification)
        out.append([bias, student, teacher, *cells])
    return out


def _defence_rows(data: Bias) -> list[list[str]]:
    return [[bias_of(r), defence_of(r), r.model,
             f"{count_text(r, 'caught', 'poisoned')} ({fmt_ci(r.value, r.ci95, RATE)})", fpr_text(r),
             count_text(r, "flagged_clean", "clean")] for r in data.catches]


def html(ctx: Context) -> HtmlParts:
    data = parse(probe_rows(ctx.report, ctx.spec.probes))
    if not (data.rates or data.amplification or data.catches):
        return []
    notes = Footnotes()
    settings = _settings(data)
    content = [f"<p>{esc(INTRO)}</p>"]
    if settings:
        content.append(f'<p class="settings">Settings: <span class="mono">{esc(settings)}</span>.</p>')
    if data.rates:
        splits = data.splits(data.rates)
        rows = _rate_rows(data, splits, lambda row: value_cell(replace(row, metric=RATE) if row else None, notes))
        body = [[esc(c) for c in row[:4]] + row[4:] for row in rows]
        content += ["<h3>Bias rates</h3>", html_table(["bias", "model", "pipeline", "kind", *splits], body,
                                                      numeric=range(4, 4 + len(splits)), css="stack")]
    if data.amplification:
        splits = data.splits(data.amplification)
        mark = notes.mark(ZERO_TEACHER) if any(r.value is None for r in data.amplification.values()) else ""
        body = [[esc(c) for c in row[:3]] + [
            f'{esc(ratio)}{mark if zero else ""}<span class="detail">{esc(beside)}</span>'
            for ratio, beside, zero in row[3:]] for row in _amplification_rows(data, splits)]
        content += ["<h3>Amplification (student / teacher)</h3>",
                    html_table(["bias", "student", "teacher", *splits], body, numeric=range(3, 3 + len(splits)))]
    content += [notes.html(), f'<p class="note">{esc(INTERVALS)}</p>']
    if data.catches:
        body = [[esc(c) for c in row] for row in _defence_rows(data)]
        content += ["<h3>Defences on the poisoned teacher's training data</h3>",
                    html_table(["bias", "defence", "model", "caught (TPR)", "FPR", "clean flagged"], body,
                               numeric=range(3, 6)),
                    f'<p class="note">{esc(_defence_note(data))}</p>',
                    _figure(ctx.pngs.get(PLOT_KEY),
                            "Grouped bars: the fraction of each bias type's poisoned training examples each defence "
                            "catches", "Catch rate (TPR) per bias type and defence; the legend gives each defence's "
                            "achieved false-positive rate.", "No plot of the defences' catch rates.")]
    return [(GROUP, TITLE, _section(GROUP, TITLE, "\n".join(content)))]


def markdown(ctx: Context) -> list[str]:
    data = parse(probe_rows(ctx.report, ctx.spec.probes))
    if not (data.rates or data.amplification or data.catches):
        return []
    notes = md_page.Footnotes()
    settings = _settings(data)
    out = [f"## {TITLE}", "", INTRO, ""] + ([f"Settings: {settings}.", ""] if settings else [])
    if data.rates:
        splits = data.splits(data.rates)
        rows = _rate_rows(data, splits, lambda row: md_page.value_text(replace(row, metric=RATE) if row else None,
                                                                       notes))
        out += ["### Bias rates", ""] + md_page.table(["bias", "model", "pipeline", "kind", *splits], rows,
                                                      "llll" + "r" * len(splits)) + [""]
    if data.amplification:
        splits = data.splits(data.amplification)
        mark = notes.mark(ZERO_TEACHER) if any(r.value is None for r in data.amplification.values()) else ""
        rows = [row[:3] + [f"{ratio}{mark if zero else ''} ({beside})" for ratio, beside, zero in row[3:]]
                for row in _amplification_rows(data, splits)]
        out += ["### Amplification (student / teacher)", ""] + md_page.table(
            ["bias", "student", "teacher", *splits], rows, "lll" + "r" * len(splits)) + [""]
    out += [INTERVALS_MD, ""] + notes.lines()
    if data.catches:
        out += ["### Defences on the poisoned teacher's training data", ""]
        out += md_page.table(["bias", "defence", "model", "caught (TPR)", "FPR", "clean flagged"],
                             _defence_rows(data), "lllrrr") + ["", _defence_note(data), ""]
        if PLOT_KEY in ctx.links:
            out += [f"![Defences' catch rates per bias type]({ctx.links[PLOT_KEY]})", ""]
    return out


register(Section(GROUP, "bias-poisoning propagation", 15, html, markdown))
