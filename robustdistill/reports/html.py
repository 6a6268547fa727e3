"""report.html: a single self-contained file (inline CSS, plots as base64 data URIs, no scripts, no external
assets), built from plain string templates with every value escaped.

The page is a fixed frame (header, summary with the verdict and gates, flags, all results, manifest) around the
sections of the report's probe groups, each rendered by the module registered for it in
:mod:`robustdistill.reports.sections`. The page shell and shared helpers live in
:mod:`robustdistill.reports.html_page`, the index page in :mod:`robustdistill.reports.html_index`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

from robustdistill.reports.data import Report
from robustdistill.reports.html_page import (
    Footnotes,
    _section,
    esc,
    gate_badges,
    html_table,
    page,
    value_cell,
)
from robustdistill.reports.privacy_data import Privacy
from robustdistill.reports.records import fmt_fact, fmt_param, fmt_params, role_sort_key
from robustdistill.reports.sections import Context, coverage, ordered, section_specs
from robustdistill.reports.status import gate_views, reduced_gate_notes

SHA_CHARS = 16


def render_html(
    report: Report, plots: Mapping[str, bytes | None], examples_note: str = "", privacy: Privacy | None = None
) -> str:
    """``plots``: "curve", "attacks", "examples", "size" and ROC_KEY + probe -> PNG bytes (or None when there is
    nothing to plot); ``privacy``: the membership-inference section's data, None without one."""
    specs = section_specs(report)
    groups = []
    for spec, section in ordered(specs):
        ctx = Context(report, spec, pngs=plots, examples_note=examples_note, privacy=privacy)
        groups += section.html(ctx)
    nav = [("summary", "Summary"), *[(anchor, title) for anchor, title, _ in groups], ("flags", "Flags"),
           ("results", "All results"), ("manifest", "Manifest")]
    parts = [
        _header(report, nav),
        _section("summary", "Summary", _summary(report)),
        *[content for _, _, content in groups],
        _section("flags", "Flags", _flags(report, specs)),
        _section("results", "All results", _results(report)),
        _section("manifest", "Manifest", _manifest(report)),
    ]
    version = report.manifest.get("robustdistill")
    parts.append(
        f"<footer>robustdistill{(' ' + esc(version)) if version else ''} · rendered "
        f"{esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}</footer>"
    )
    return page(f"{report.title} — robustdistill audit ({report.suite_name})", "\n".join(parts))


def _header(report: Report, nav: list[tuple[str, str]]) -> str:
    """The pipeline as the title (teacher → student), the suite, the checkpoints' paths, threat model and date."""
    who = []
    for role in report.roles:
        path = report.checkpoints.get(role, {}).get("path")
        who.append(f"{esc(role)}" + (f" <code>{esc(path)}</code>" if path else ""))
    sub = " · ".join(
        p
        for p in [
            ", ".join(who),
            esc(report.threat_model()) if report.attacks_inputs else "",
            esc(report.manifest.get("finished") or ""),
        ]
        if p
    )
    links = "".join(f'<a href="#{esc(anchor)}">{esc(title)}</a>' for anchor, title in nav)
    return (
        f'<header><p class="eyebrow">robustdistill audit report · suite {esc(report.suite_name)}</p>'
        f'<h1>{esc(report.title)}</h1><p class="sub">{sub}</p><nav>{links}</nav></header>'
    )


def _summary(report: Report) -> str:
    """The verdict, why, a warning per model flagged for gradient masking, then the gates."""
    verdict = report.verdict_text()
    klass = {"PASS": "pass", "FAIL": "fail"}.get(verdict, "none")
    summary = [
        f'<div class="verdict {klass}"><div class="word">{esc(verdict)}</div>'
        f'<div class="detail">{esc(report.verdict_detail())}</div></div>'
    ]
    reasons = [f"<li>{esc(reason)}</li>" for reason in report.verdict_reasons]
    reasons += [f'<li class="note">⚠ {esc(note)}</li>' for note in report.verdict_notes]
    if reasons:
        summary.append(f'<ul class="reasons">{"".join(reasons)}</ul>')
    for role in report.masked_roles:
        checks = [f for f in report.flags if f.is_masking and f.model == role]
        items = "".join(f"<li>{esc(f.check + ': ' if f.check else '')}{esc(f.evidence)}</li>" for f in checks)
        summary.append(
            f'<div class="warning" role="alert"><strong>⚠ Robust accuracy of {esc(role)} not to be trusted'
            f"</strong>Gradient masking detected: attacks that follow this model's gradients under-report "
            f"its vulnerability, so its robust accuracy (and any gate on it) overstates real robustness."
            f"<ul>{items}</ul></div>"
        )
    summary.append(_gates(report) if report.gates else '<p class="note">This suite defines no gates.</p>')
    return "\n".join(summary)


def _gates(report: Report) -> str:
    views = gate_views(report.gates, report.masked_roles, report.reduced)
    rows = [
        [
            f"<code>{esc(v.metric)}</code>" + (' <span class="reduced">(reduced)</span>' if v.reduced else ""),
            esc(v.op),
            esc(v.threshold),
            esc(v.value),
            gate_badges(v.status),
        ]
        for v in views
    ]
    classes = ["failed" if v.status.result == "fail" else "" for v in views]
    notes = "".join(f'<p class="note reduced">⚠ {esc(text)}</p>' for text in reduced_gate_notes(views))
    header = ["Gate", "Op", "Threshold", "Value", "Result"]
    return "<h3>Gates</h3>" + html_table(header, rows, numeric=(2, 3), row_classes=classes) + notes


def _flags(report: Report, specs: list) -> str:
    """Every flag with its evidence, then what was and was not checked (so "no flags" is not read as "all clear"
    for checks that never ran)."""
    content = []
    for flag in report.flags:
        extra = "".join(
            f'<div><span class="note">{esc(k)}:</span> {esc(fmt_param(v))}</div>' for k, v in flag.extra.items()
        )
        check = f" · <code>{esc(flag.check)}</code>" if flag.check else ""
        content.append(
            f'<div class="flag{" masking" if flag.is_masking else ""}"><div class="head">'
            f"{esc(flag.kind)} · {esc(flag.model)}{check}</div>"
            f'<div class="evidence">{esc(flag.evidence or "(no evidence given)")}</div>{extra}</div>'
        )
    if not report.flags:
        content.append('<p class="note">No flags.</p>')
    checked = "".join(f"<li>{esc(line)}</li>" for line in coverage(report, specs))
    content.append(f'<h3>What was checked</h3><ul class="reasons">{checked}</ul>')
    return "\n".join(content)


def _results(report: Report) -> str:
    """Every row of report.json, collapsed: 60 rows would bury the sections above."""
    if not report.rows:
        return '<p class="note">report.json holds no results.</p>'
    notes = Footnotes()
    rows = [
        [
            esc(r.probe),
            esc(report.display_label(r.label)),
            esc(r.model),
            esc(r.metric),
            value_cell(r, notes),
            esc(r.n if r.n is not None else "—"),
            f'<span class="mono">{esc(fmt_params(r.params))}</span>',
        ]
        for r in report.rows
    ]
    table = html_table(["Probe", "Label", "Model", "Metric", "Value [95% CI]", "n", "Params"], rows, numeric=(4, 5),
                       css="compact")
    return f"<details><summary>Show all {len(report.rows)} rows</summary>{table}{notes.html()}</details>"


def _manifest(report: Report) -> str:
    content = []
    if report.checkpoints:
        rows = []
        for role, info in sorted(report.checkpoints.items(), key=lambda kv: role_sort_key(kv[0])):
            sha = str(info.get("sha256") or "—")
            rows.append([
                esc(role),
                f"<code>{esc(info.get('path', '—'))}</code>",
                f'<code title="{esc(sha)}">{esc(sha[:SHA_CHARS])}</code>',
            ])
        content.append(html_table(["Role", "Checkpoint", "sha256"], rows))
    facts = [(k, v) for k, v in report.manifest.items() if k != "checkpoints"]
    if facts:
        rows = []
        for key, value in facts:
            shown, full = fmt_fact(value), fmt_fact(value, shorten=False)
            tip = f' title="{esc(full)}"' if shown != full else ""  # the full digests on hover
            rows.append([esc(key), f"<span{tip}>{esc(shown)}</span>"])
        content.append(html_table(["Field", "Value"], rows, css="compact"))
    if report.suite:
        content.append(
            "<details><summary>Resolved suite</summary>"
            f"<pre>{esc(json.dumps(report.suite, indent=2, default=str))}</pre></details>"
        )
    return "\n".join(content) or '<p class="note">No manifest.</p>'
