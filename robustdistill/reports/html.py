"""report.html and index.html: single self-contained files (inline CSS, plots as base64 data URIs, no scripts,
no external assets), built from plain string templates with every value escaped.

This module keeps :func:`render_html`, the audit report's page and its sections (verdict, gates, comparison,
plots, examples, flags, full results, run details). The page shell and shared helpers live in
:mod:`robustdistill.reports.html_page`, the privacy and size sections in :mod:`robustdistill.reports.html_sections`
and the index page in :mod:`robustdistill.reports.html_index`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

from robustdistill.reports.data import Report
from robustdistill.reports.html_page import GATE_TITLES, _cell_value, _figure, _section, esc, html_table, page, pill
from robustdistill.reports.html_sections import _privacy_section, _size_section
from robustdistill.reports.privacy_data import Privacy
from robustdistill.reports.records import (
    fmt_interval,
    fmt_param,
    fmt_params,
    fmt_row,
    fmt_value,
    humanise,
    role_sort_key,
)

SHA_CHARS = 16


def render_html(
    report: Report, plots: Mapping[str, bytes | None], examples_note: str = "", privacy: Privacy | None = None
) -> str:
    """``plots``: "curve", "attacks", "examples" and ROC_KEY + probe -> PNG bytes (or None when there is nothing
    to plot); ``privacy``: the membership-inference section, left out when None."""
    masked = set(report.masked_roles)
    roles = report.roles
    checkpoints = report.checkpoints
    size = report.size()
    parts: list[str] = []

    # --- header ---------------------------------------------------------------------------------------------
    who = {}
    for role in roles:
        path = checkpoints.get(role, {}).get("path")
        who[role] = f"{esc(role)}" + (f" <code>{esc(path)}</code>" if path else "")
    pair = [who.pop("teacher") + " → " + who.pop("student")] if "teacher" in who and "student" in who else []
    sub = " · ".join(
        p
        for p in [
            ", ".join(pair + list(who.values())),
            esc(report.threat_model()) if report.attacks_inputs else "",
            esc(report.manifest.get("finished") or ""),
        ]
        if p
    )
    sections = [
        ("summary", "Summary"),
        ("comparison", "Teacher vs student"),
        *([("size", "Size")] if size is not None else []),
        # A privacy-only suite attacks no inputs: no curve, bars or adversarial examples to show.
        *([("curves", "Robustness curve"), ("attacks", "Per attack"), ("examples", "Examples")]
          if report.attacks_inputs else []),
        *([("privacy", "Privacy")] if privacy is not None else []),
        ("flags", "Flags"),
        ("results", "All results"),
        ("manifest", "Manifest"),
    ]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in sections)
    parts.append(
        f'<header><p class="eyebrow">robustdistill audit report</p><h1>{esc(report.suite_name)}</h1>'
        f'<p class="sub">{sub}</p><nav>{nav}</nav></header>'
    )

    # --- summary: verdict, masking warnings, gates ------------------------------------------------------------
    verdict = report.verdict_text()
    klass = {"PASS": "pass", "FAIL": "fail"}.get(verdict, "none")
    summary = [
        (
            f'<div class="verdict {klass}"><div class="word">{esc(verdict)}</div>'
            f'<div class="detail">{esc(report.verdict_detail())}</div></div>'
        )
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
    if report.gates:
        rows, classes = [], []
        for gate in report.gates:
            result = pill(gate.passed)
            warning = gate.warning(masked)
            if warning:
                result += f' <span class="pill warn" title="{esc(GATE_TITLES[warning])}">{esc(warning.upper())}</span>'
            rows.append(
                [
                    f"<code>{esc(gate.metric)}</code>",
                    esc(gate.op),
                    esc(fmt_value(gate.threshold, gate.metric)),
                    esc(fmt_value(gate.value, gate.metric)),
                    result,
                ]
            )
            classes.append("failed" if gate.passed is False else "")
        summary.append(
            "<h3>Gates</h3>"
            + html_table(["Gate", "Op", "Threshold", "Value", "Result"], rows, numeric=(2, 3), row_classes=classes)
        )
    else:
        summary.append('<p class="note">This suite defines no gates.</p>')
    parts.append(_section("summary", "Summary", "\n".join(summary)))

    # --- teacher vs student ------------------------------------------------------------------------------------
    comparison_roles, entries = report.comparison()
    content = []
    if entries:
        retention = "teacher" in comparison_roles and "student" in comparison_roles
        header = ["Metric", *map(esc, comparison_roles)] + (
            ["Retention<br><small>student / teacher</small>"] if retention else []
        )
        rows = []
        for entry in entries:
            title = esc(entry.title())
            detail = entry.detail()
            if detail:
                title += f'<span class="detail">{esc(detail)}</span>'
            row = [title]
            for role in comparison_roles:
                untrusted = role in masked and entry.metric != "accuracy"
                row.append(_cell_value(entry.cells.get(role), untrusted))
            if retention:
                flagged = (
                    bool({"teacher", "student"} & masked)
                    and entry.metric != "accuracy"
                    and entry.retention() is not None
                )
                row.append(
                    esc(fmt_value(entry.retention(), "retention"))
                    + (
                        ' <span class="untrusted" title="gradient masking detected: not to be trusted">⚠</span>'
                        if flagged
                        else ""
                    )
                )
            rows.append(row)
        content.append(html_table(header, rows, numeric=range(1, len(header))))
        content.append(
            '<p class="note">Point estimate ± half the 95% confidence interval (hover for the interval '
            "and n). Retention is the student's value as a share of the teacher's.</p>"
        )
    else:
        content.append('<p class="note">No accuracy rows to compare.</p>')
    transfer = report.transfer_rows()
    if transfer:
        rows = [
            [
                esc(r.params.get("source", "?")),
                esc(r.params.get("target", r.model)),
                esc(r.label),
                esc(humanise(r.metric)),
                _cell_value(r, False),
            ]
            for r in transfer
        ]
        content.append(
            "<h3>Transfer</h3>"
            + html_table(["Crafted on", "Evaluated on", "Attack", "Metric", "Value"], rows, numeric=(4,))
        )
    other = [r for r in report.rows if r.probe in ("agreement", "retention")]
    if other:
        rows = [
            [esc(humanise(r.metric)), esc(r.model), esc(fmt_params(r.params)), _cell_value(r, False)] for r in other
        ]
        content.append(
            "<h3>Agreement and retention</h3>" + html_table(["Metric", "Model", "Params", "Value"], rows, numeric=(3,))
        )
    parts.append(_section("comparison", "Teacher vs student", "\n".join(content)))
    if size is not None:
        threat = report.threat_model() if report.attacks_inputs else ""
        parts.append(_size_section(size, threat, plots.get("size"), masked))

    # --- plots ------------------------------------------------------------------------------------------------
    plot_sections: list[str] = []
    plot_sections.append(
        _section(
            "curves",
            "Robustness curve",
            _figure(
                plots.get("curve"),
                "Robust accuracy against perturbation budget, all models on one plot",
                "Robust accuracy as the perturbation budget ε grows; shaded bands are 95% confidence intervals, the dotted "
                "line marks the suite's threat model.",
                'This run has no robustness-curve rows (probe "curve").',
            ),
        )
    )
    plot_sections.append(
        _section(
            "attacks",
            "Per attack",
            _figure(
                plots.get("attacks"),
                "Clean and robust accuracy per attack, grouped by model",
                "Clean accuracy and robust accuracy under each attack; error bars are 95% confidence intervals.",
                "This run has no clean or robust accuracy rows.",
            ),
        )
    )
    plot_sections.append(
        _section(
            "examples",
            "Examples",
            _figure(
                plots.get("examples"),
                "Grid of clean inputs, adversarial inputs and perturbations per model",
                "Top row: clean inputs with their true label. Per model: the adversarial input titled “clean prediction → "
                "adversarial prediction” (red when wrong), and the perturbation (red = brighter, blue = darker).",
                f"No examples: {examples_note}." if examples_note else "No examples.",
            ),
        )
    )

    if report.attacks_inputs:
        parts.extend(plot_sections)

    if privacy is not None:
        parts.append(_privacy_section(privacy, plots))

    # --- flags ------------------------------------------------------------------------------------------------
    content = []
    if report.flags:
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
    else:
        content.append('<p class="note">No flags: none of the checks found signs of gradient masking.</p>')
    checks = [r for r in report.rows if r.probe == "masking"]
    if checks:
        rows = [
            [esc(r.model), esc(humanise(r.metric)), esc(fmt_params(r.params)), _cell_value(r, False)] for r in checks
        ]
        content.append(
            "<h3>Masking checks measured</h3>" + html_table(["Model", "Check", "Params", "Value"], rows, numeric=(3,))
        )
    parts.append(_section("flags", "Flags", "\n".join(content)))

    # --- all results ------------------------------------------------------------------------------------------
    if report.rows:
        rows = []
        for r in report.rows:
            params = esc(fmt_params(r.params))
            rows.append(
                [
                    esc(r.probe),
                    esc(r.label),
                    esc(r.model),
                    esc(r.metric),
                    esc(fmt_row(r)),
                    esc(fmt_interval(r.ci95, r.metric)),
                    esc(r.n if r.n is not None else "—"),
                    f'<span class="mono">{params}</span>',
                ]
            )
        table = html_table(
            ["Probe", "Label", "Model", "Metric", "Value", "95% CI", "n", "Params"],
            rows,
            numeric=(4, 5, 6),
            css="compact",
        )
        content = f"<details open><summary>{len(report.rows)} rows</summary>{table}</details>"
    else:
        content = '<p class="note">report.json holds no results.</p>'
    parts.append(_section("results", "All results", content))

    # --- manifest ---------------------------------------------------------------------------------------------
    content = []
    if checkpoints:
        rows = []
        for role, info in sorted(checkpoints.items(), key=lambda kv: role_sort_key(kv[0])):
            sha = str(info.get("sha256") or "—")
            rows.append(
                [
                    esc(role),
                    f"<code>{esc(info.get('path', '—'))}</code>",
                    f'<code title="{esc(sha)}">{esc(sha[:SHA_CHARS])}</code>',
                ]
            )
        content.append(html_table(["Role", "Checkpoint", "sha256"], rows))
    facts = [(k, v) for k, v in report.manifest.items() if k != "checkpoints"]
    if facts:
        rows = [[esc(k), esc(v if isinstance(v, str | int | float) else json.dumps(v, default=str))] for k, v in facts]
        content.append(html_table(["Field", "Value"], rows, css="compact"))
    if report.suite:
        content.append(
            f"<details><summary>Resolved suite</summary><pre>{esc(json.dumps(report.suite, indent=2, default=str))}</pre></details>"
        )
    parts.append(_section("manifest", "Manifest", "\n".join(content) or '<p class="note">No manifest.</p>'))

    version = report.manifest.get("robustdistill")
    parts.append(
        f"<footer>robustdistill{(' ' + esc(version)) if version else ''} · rendered "
        f"{esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}</footer>"
    )
    return page(f"{report.suite_name} — robustdistill report", "\n".join(parts))
