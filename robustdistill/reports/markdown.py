"""report.md: the report for terminals and pull requests (GitHub-flavoured Markdown)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from robustdistill.reports.data import Report
from robustdistill.reports.privacy_data import MIA_METRICS, PRIVACY_INTRO, VIEWS, Privacy
from robustdistill.reports.records import (
    NOT_RESOLVABLE,
    Row,
    fmt_ci,
    fmt_interval,
    fmt_params,
    fmt_row,
    fmt_size,
    fmt_value,
    humanise,
    role_sort_key,
)
from robustdistill.reports.size_data import SIZE_TITLE, Size

SHA_CHARS = 12


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def verdict_line(report: Report) -> str:
    verdict = report.verdict_text()
    line = f"**Verdict: {verdict}** — {report.verdict_detail()}"
    for role in report.masked_roles:
        line += f" ⚠️ **{report.masking_warning(role)}**"
    return line


def verdict_reasons(report: Report) -> list[str]:
    """The stored verdict's reasons (why it failed) and notes (warnings that did not fail it), as a list."""
    lines = [f"- {cell(reason)}" for reason in report.verdict_reasons]
    lines += [f"- ⚠️ {cell(note)}" for note in report.verdict_notes]
    return [*lines, ""] if lines else []


SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def privacy_section(privacy: Privacy, roc_plots: Mapping[str, str]) -> list[str]:
    """The membership-inference table (one column per role and metric), its footnotes and the ROC plots."""

    def value(row: Row | None) -> str:
        if row is None:
            return "—"
        if row.unresolvable:
            number = privacy.footnote(row)
            return NOT_RESOLVABLE + (str(number).translate(SUPERSCRIPT) if number else "")
        return fmt_ci(row.value, row.ci95, row.metric)

    out = ["## Membership inference (privacy)", "", PRIVACY_INTRO, ""]
    header = ["probe", "attacked with", "members / non-members"]
    header += [f"{role} {title}".replace("\n", " ") for role in privacy.roles for title in MIA_METRICS.values()]
    rows = [
        [entry.title(), VIEWS[entry.view], entry.sizes()]
        + [value(entry.cells.get(role, {}).get(metric)) for role in privacy.roles for metric in MIA_METRICS]
        for entry in privacy.rows
    ]
    out += table(header, rows, "lll" + "r" * (len(header) - 3))
    out += ["", "Values are point estimates ± half the 95% confidence interval where the run computed one.", ""]
    for number, note in enumerate(privacy.footnotes(), 1):
        out += [f"{str(number).translate(SUPERSCRIPT)} {note}", ""]
    for probe in privacy.probes:
        if probe in roc_plots:
            out += [f"![Membership inference ROC ({probe})]({roc_plots[probe]})", ""]
        out += [f"_{probe}: {note}._" for note in privacy.notes.get(probe, [])]
        if privacy.notes.get(probe):
            out.append("")
    return out


def size_section(size: Size, threat: str, plot: str | None) -> list[str]:
    """The models by size, smallest first, with their clean and robust accuracies."""
    out = [f"## {SIZE_TITLE}", "", size.intro(threat), ""]
    header = ["model", "parameters", "MACs"]
    header += [c.title if c.kind != "attack" else f"robust: {c.title}" for c in size.columns]
    rows = []
    for model in size.models:
        macs = model.macs.value if model.macs is not None else None
        row = [model.role, fmt_size(model.parameters.value), fmt_size(macs)]
        for column in size.columns:
            found = column.cells.get(model.role)
            text = fmt_value(found.value, found.metric) if found is not None else "—"
            row.append(text)
        rows.append(row)
    out += table(header, rows, "l" + "r" * (len(header) - 1)) + [""]
    if plot:
        out += [f"![{SIZE_TITLE}]({plot})", ""]
    return out


def render_markdown(
    report: Report,
    plots: dict[str, str],
    examples_note: str = "",
    privacy: Privacy | None = None,
    roc_plots: Mapping[str, str] | None = None,
    size_plot: str | None = None,
) -> str:
    """``plots``: caption -> path relative to the run directory; ``roc_plots``: membership-inference probe ->
    path of its ROC plot, shown in the privacy section (present only when ``privacy`` is); ``size_plot``: path of
    the accuracy-against-size plot, shown in the size section (present when the report has size rows for two or
    more models)."""
    out: list[str] = []
    roles = report.roles
    subtitle = " vs ".join(f"`{r}`" for r in roles) if roles else ""
    out += [f"# Audit report: {report.suite_name}", ""]
    threat = report.threat_model() if report.attacks_inputs else ""
    meta = [p for p in (subtitle, threat, str(report.manifest.get("finished") or "")) if p]
    if meta:
        out += [" · ".join(meta), ""]
    out += [verdict_line(report), ""]
    out += verdict_reasons(report)

    out += ["## Gates", ""]
    if report.gates:
        masked = set(report.masked_roles)
        rows = []
        for gate in report.gates:
            result = {True: "✅ pass", False: "❌ FAIL", None: "— undecided"}[gate.passed]
            warning = gate.warning(masked)
            if warning:
                result += f" ⚠️ {warning}"
            rows.append(
                [
                    f"`{gate.metric}`",
                    gate.op,
                    fmt_value(gate.threshold, gate.metric),
                    fmt_value(gate.value, gate.metric),
                    result,
                ]
            )
        out += table(["gate", "op", "threshold", "value", "result"], rows, "lcrrl")
    else:
        out.append("No gates defined by this suite.")
    out.append("")

    comparison_roles, entries = report.comparison()
    if entries:
        out += ["## Teacher vs student", ""]
        retention = "teacher" in comparison_roles and "student" in comparison_roles
        header = ["metric", *comparison_roles] + (["retention (student / teacher)"] if retention else [])
        rows = []
        for entry in entries:
            row = [entry.title()]
            for role in comparison_roles:
                found = entry.cells.get(role)
                row.append(fmt_ci(found.value, found.ci95, found.metric) if found else "—")
            if retention:
                row.append(fmt_value(entry.retention(), "retention"))
            rows.append(row)
        out += table(header, rows, "l" + "r" * (len(header) - 1))
        out += ["", "Values are point estimates ± half the 95% confidence interval where the run computed one.", ""]

    transfer = report.transfer_rows()
    if transfer:
        out += ["## Transfer", ""]
        rows = [
            [
                r.params.get("source", "?"),
                r.params.get("target", r.model),
                r.label,
                humanise(r.metric),
                fmt_ci(r.value, r.ci95, r.metric),
            ]
            for r in transfer
        ]
        out += table(["crafted on", "evaluated on", "attack", "metric", "value"], rows, "llllr") + [""]

    size = report.size()
    if size is not None:
        out += size_section(size, threat, size_plot)

    if privacy is not None:
        out += privacy_section(privacy, roc_plots or {})

    out += ["## Flags", ""]
    if report.flags:
        for flag in report.flags:
            check = f" · {flag.check}" if flag.check else ""
            out.append(f"- **{flag.kind}** · `{flag.model}`{check}: {flag.evidence or '(no evidence given)'}")
            for key, value in flag.extra.items():
                out.append(f"  - {key}: {value if isinstance(value, str) else json.dumps(value, default=str)}")
    else:
        out.append("No flags: none of the checks found signs of gradient masking or other problems.")
    out.append("")

    if plots or examples_note:
        out += ["## Plots", ""]
        for caption, path in plots.items():
            out += [f"![{caption}]({path})", ""]
        if examples_note and report.attacks_inputs:
            out += [f"_Examples: {examples_note}._", ""]

    out += ["## Manifest", ""]
    checkpoints = report.checkpoints
    if checkpoints:
        rows = [
            [f"`{role}`", info.get("path", "—"), f"`{str(info.get('sha256', '—'))[:SHA_CHARS]}`"]
            for role, info in sorted(checkpoints.items(), key=lambda kv: role_sort_key(kv[0]))
        ]
        out += table(["role", "checkpoint", "sha256"], rows) + [""]
    facts = [(k, v) for k, v in report.manifest.items() if k != "checkpoints"]
    if facts:
        out += table(
            ["field", "value"],
            [[k, v if isinstance(v, str | int | float) else json.dumps(v, default=str)] for k, v in facts],
        )
        out.append("")

    if report.rows:
        out += ["<details><summary>All results</summary>", ""]
        rows = [
            [
                r.probe,
                r.label,
                r.model,
                r.metric,
                fmt_row(r),
                fmt_interval(r.ci95, r.metric),
                r.n if r.n is not None else "—",
                fmt_params(r.params),
            ]
            for r in report.rows
        ]
        out += table(["probe", "label", "model", "metric", "value", "95% CI", "n", "params"], rows, "llllrrrl")
        out += ["", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"
