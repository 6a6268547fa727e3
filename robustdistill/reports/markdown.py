"""report.md: the report for terminals and pull requests (GitHub-flavoured Markdown).

The same frame as report.html (title, verdict, gates, the probe groups' sections from
:mod:`robustdistill.reports.sections`, flags, manifest, all results) with the same numbers, statuses and labels.
"""

from __future__ import annotations

from collections.abc import Mapping

from robustdistill.reports.data import Report
from robustdistill.reports.md_page import cell, gate_text, table, value_text
from robustdistill.reports.privacy_data import Privacy
from robustdistill.reports.records import fmt_fact, fmt_params, role_sort_key
from robustdistill.reports.sections import Context, SectionSpec, coverage, ordered, section_specs
from robustdistill.reports.status import gate_views, reduced_gate_notes

SHA_CHARS = 12

__all__ = ["cell", "render_markdown", "table", "verdict_line"]


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


def gates(report: Report) -> list[str]:
    if not report.gates:
        return ["## Gates", "", "No gates defined by this suite.", ""]
    views = gate_views(report.gates, report.masked_roles, report.reduced)
    rows = [[f"`{v.metric}`" + (" (reduced)" if v.reduced else ""), v.op, v.threshold, v.value, gate_text(v.status)]
            for v in views]
    out = ["## Gates", ""] + table(["gate", "op", "threshold", "value", "result"], rows, "lcrrl") + [""]
    notes = reduced_gate_notes(views)
    return out + [f"⚠️ {text}" for text in notes] + ([""] if notes else [])


def flags(report: Report, specs: list[SectionSpec]) -> list[str]:
    out = ["## Flags", ""]
    for flag in report.flags:
        check = f" · {flag.check}" if flag.check else ""
        out.append(f"- **{flag.kind}** · `{flag.model}`{check}: {flag.evidence or '(no evidence given)'}")
        out += [f"  - {key}: {fmt_fact(value)}" for key, value in flag.extra.items()]
    if not report.flags:
        out.append("No flags.")
    out += ["", "What was checked:", ""] + [f"- {line}" for line in coverage(report, specs)] + [""]
    return out


def manifest(report: Report) -> list[str]:
    out = ["## Manifest", ""]
    if report.checkpoints:
        rows = [
            [f"`{role}`", info.get("path", "—"), f"`{str(info.get('sha256', '—'))[:SHA_CHARS]}`"]
            for role, info in sorted(report.checkpoints.items(), key=lambda kv: role_sort_key(kv[0]))
        ]
        out += table(["role", "checkpoint", "sha256"], rows) + [""]
    facts = [(k, v) for k, v in report.manifest.items() if k != "checkpoints"]
    if facts:
        out += table(["field", "value"], [[k, fmt_fact(v)] for k, v in facts]) + [""]
    return out


def results(report: Report) -> list[str]:
    if not report.rows:
        return []
    rows = [
        [r.probe, report.display_label(r.label), r.model, r.metric, value_text(r), r.n if r.n is not None else "—",
         fmt_params(r.params)]
        for r in report.rows
    ]
    out = ["<details><summary>All results</summary>", ""]
    out += table(["probe", "label", "model", "metric", "value [95% CI]", "n", "params"], rows, "llllrrl")
    return out + ["", "</details>", ""]


def render_markdown(
    report: Report,
    links: Mapping[str, str],
    examples_note: str = "",
    privacy: Privacy | None = None,
) -> str:
    """``links``: plot key ("curve", "attacks", "examples", "size", ROC_KEY + probe) -> its path relative to the
    run directory, for the plots written; ``privacy``: the membership-inference section's data, None without one."""
    specs = section_specs(report)
    title = report.title + (f" (suite {report.suite_name})" if report.pipeline else "")
    out = [f"# Audit report: {title}", ""]
    subtitle = " vs ".join(f"`{r}`" for r in report.roles)
    threat = report.threat_model() if report.attacks_inputs else ""
    meta = [p for p in (subtitle, threat, str(report.manifest.get("finished") or "")) if p]
    if meta:
        out += [" · ".join(meta), ""]
    out += [verdict_line(report), ""]
    out += verdict_reasons(report)
    out += gates(report)
    for spec, section in ordered(specs):
        out += section.markdown(Context(report, spec, links=links, examples_note=examples_note, privacy=privacy))
    out += flags(report, specs)
    out += manifest(report)
    out += results(report)
    return "\n".join(out).rstrip() + "\n"
