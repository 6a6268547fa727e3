"""The language-model groups: behaviour (refusals, task accuracy), jailbreaks (GCG, transfer, ALO-ASR) and
membership inference against the teacher's fine-tuning data. Each is one table with a row per (probe, metric) and a
column per model, every value with its 95% interval, so teacher and student read side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from robustdistill.reports import md_page
from robustdistill.reports.html_page import Footnotes, _section, esc, html_table, value_cell
from robustdistill.reports.records import Row, fmt_params
from robustdistill.reports.sections import INTERVALS, INTERVALS_MD, Context, HtmlParts, Section, register

ATTACK_TITLES = {"loss": "loss", "zlib": "zlib ratio", "min_k": "min-k%", "min_k_plus_plus": "min-k%++",
                 "reference": "reference model"}
# Balanced accuracy stays in report.json: its threshold is chosen on the evaluated points (optimistic).
MIA_METRICS = {"auc": "AUC", "tpr_at_1pct_fpr": "TPR at 1% FPR", "tpr_at_0_1pct_fpr": "TPR at 0.1% FPR"}


@dataclass(frozen=True)
class Group:
    group: str
    title: str
    checks: str  # what the group checks, for the Flags section's coverage line
    order: int
    intro: str
    labels: dict[str, str]  # metric -> row label, in the order rows are shown (MIA metrics are composed)


GROUPS = (
    Group("lm-behaviour", "Refusals and task accuracy", "refusals and task accuracy", 12,
          "Greedy responses to plain requests of the evaluation split. Refusal rate: the fraction of harmful "
          "requests refused; over-refusal: benign requests refused (refusal-prefix judge). Task accuracy: exact "
          "match on the task families the teacher was trained on, and on held-out families it never saw.",
          {"refusal_rate": "refusal rate (harmful requests)", "benign_refusal_rate": "over-refusal (benign requests)",
           "accuracy": "task accuracy", "held_out_accuracy": "held-out task accuracy"}),
    Group("jailbreak", "Jailbreaks (GCG) and their transfer", "GCG jailbreaks and transfer", 14,
          "Attack success rate (ASR): the fraction of attacked harmful requests whose greedy response the judge "
          "counts as jailbroken. Direct: the plain request; GCG: with a suffix optimised on that model (Zou et al. "
          "2023); unoptimised suffix: with the suffix GCG starts from (when it already succeeds, the refusal is "
          "brittle rather than the attack strong); transfer: with the teacher's suffix on the student, and the "
          "student's on the teacher; ALO-ASR (MixAT): broken by at least one of them. The judge is in the settings: "
          "refusal-prefix is weak (any response without a refusal string counts, gibberish included); target (the "
          "response begins with the attack's target) and a classifier judge are stricter.",
          {"direct_asr": "direct-request ASR", "init_suffix_asr": "unoptimised-suffix ASR (GCG's starting suffix)",
           "asr": "GCG ASR (own suffix)",
           "transfer_asr": "transfer ASR (teacher's suffixes on this model)",
           "reverse_transfer_asr": "reverse transfer ASR (this model's suffixes on the teacher)",
           "alo_asr": "ALO-ASR (at least one attack)", "final_loss": "GCG target loss (mean, lower = closer)"}),
    Group("lm-privacy", "Membership inference on the teacher's fine-tuning data", "language-model membership", 16,
          "Each model is attacked with the TEACHER's fine-tuning examples as members and evaluation-split examples "
          "of the same task families as non-members (one pool, a random split). A student scoring above 0.5 AUC "
          "leaks what only its teacher saw (Jagielski et al. 2023). Scores use response tokens only.",
          {f"{attack}_{metric}": f"{title}: {label}" for attack, title in ATTACK_TITLES.items()
           for metric, label in MIA_METRICS.items()}),
)


def _ordered(rows: Sequence[Row], group: Group, roles: Sequence[str]) -> list[tuple[str, str, dict[str, Row]]]:
    """(probe, label, role -> row) in the group's metric order, one entry per probe and metric."""
    entries: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        if row.metric in group.labels:
            entries.setdefault((row.probe, row.metric), {})[row.model] = row
    order = list(group.labels)
    keys = sorted(entries, key=lambda k: (order.index(k[1]), k[0]))
    sources = {metric: sum(1 for _, m in keys if m == metric) for _, metric in keys}
    return [(probe, group.labels[metric] + (f" ({probe})" if sources[metric] > 1 else ""), entries[(probe, metric)])
            for probe, metric in keys]


def _rows(ctx: Context) -> list[Row]:
    names = set(ctx.spec.probes)
    return [r for r in ctx.report.rows if r.probe in names or (ctx.spec.group == "jailbreak" and r.probe == "alo-asr")]


def _settings(rows: Sequence[Row]) -> str:
    params = [r.params for r in rows if r.probe != "alo-asr"]
    if not params:
        return ""
    shared = {k: v for k, v in params[0].items() if all(p.get(k) == v for p in params)
              and k not in ("source", "target", "note")}
    return fmt_params(shared)


def _html(group: Group):
    def html(ctx: Context) -> HtmlParts:
        rows = _rows(ctx)
        roles = ctx.report.roles
        entries = _ordered(rows, group, roles)
        if not entries:
            return []
        notes = Footnotes()
        body = [[esc(label), *(value_cell(cells.get(role), notes) for role in roles)] for _, label, cells in entries]
        settings = _settings(rows)
        content = (f"<p>{esc(group.intro)}</p>"
                   + (f'<p class="settings">Settings: <span class="mono">{esc(settings)}</span>.</p>' if settings else "")
                   + html_table(["", *roles], body, numeric=range(1, len(roles) + 1))
                   + notes.html() + f'<p class="note">{esc(INTERVALS)}</p>')
        return [(group.group, group.title, _section(group.group, group.title, content))]

    return html


def _markdown(group: Group):
    def markdown(ctx: Context) -> list[str]:
        rows = _rows(ctx)
        roles = ctx.report.roles
        entries = _ordered(rows, group, roles)
        if not entries:
            return []
        notes = md_page.Footnotes()
        body = [[label, *(md_page.value_text(cells.get(role), notes) for role in roles)] for _, label, cells in entries]
        settings = _settings(rows)
        out = [f"## {group.title}", "", group.intro, ""] + ([f"Settings: {settings}.", ""] if settings else [])
        return out + md_page.table(["", *roles], body, "l" + "r" * len(roles)) + ["", INTERVALS_MD, ""] + notes.lines()

    return markdown


for _group in GROUPS:
    register(Section(_group.group, _group.checks, _group.order, _html(_group), _markdown(_group)))
