"""report.html and index.html: single self-contained files (inline CSS, plots as base64 data URIs, no scripts,
no external assets), built from plain string templates with every value escaped."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from robustdistill.reports.data import (
    MIA_METRICS,
    NOT_RESOLVABLE,
    PRIVACY_INTRO,
    ROC_KEY,
    SIZE_TITLE,
    VIEWS,
    Privacy,
    Report,
    Row,
    Size,
    SizeColumn,
    fmt_ci,
    fmt_interval,
    fmt_param,
    fmt_params,
    fmt_row,
    fmt_size,
    fmt_value,
    humanise,
    is_fraction,
    role_sort_key,
    to_float,
)

SHA_CHARS = 16

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --zebra: #f6f8fa; --bg: #eef1f4;
  --pass: #1a7f37; --pass-bg: #dafbe1; --fail: #cf222e; --fail-bg: #ffebe9; --warn: #9a6700; --warn-bg: #fff8c5;
  --none: #59636e; --none-bg: #eaeef2; --accent: #3b6fb6; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.5; font-size: 15px;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1080px; margin: 24px auto; padding: 32px 40px 40px; background: #fff; border-radius: 12px;
  box-shadow: 0 1px 3px rgba(31,35,40,.08), 0 8px 24px rgba(66,74,83,.06); }
header .eyebrow { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--muted);
  font-weight: 600; }
h1 { margin: 4px 0 6px; font-size: 28px; line-height: 1.25; }
h2 { margin: 36px 0 12px; font-size: 20px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { margin: 20px 0 8px; font-size: 16px; }
p.sub { margin: 0; color: var(--muted); }
nav { margin: 18px 0 0; display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
code, .mono { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 0.88em; }
code { background: var(--zebra); padding: 1px 5px; border-radius: 4px; }
.verdict { display: flex; align-items: center; gap: 20px; margin: 24px 0 12px; padding: 16px 22px;
  border-radius: 10px; border: 1px solid; }
.verdict .word { font-size: 30px; font-weight: 800; letter-spacing: .04em; }
.verdict .detail { font-size: 16px; }
.verdict.pass { color: var(--pass); background: var(--pass-bg); border-color: #aceebb; }
.verdict.fail { color: var(--fail); background: var(--fail-bg); border-color: #ffcecb; }
.verdict.none { color: var(--none); background: var(--none-bg); border-color: var(--line); }
.verdict .detail { color: var(--fg); }
.reasons { margin: 0 0 16px; padding-left: 22px; }
.reasons li { margin: 4px 0; }
.warning { margin: 12px 0; padding: 14px 18px; border-radius: 8px; background: var(--warn-bg);
  border: 1px solid #f2cc60; border-left: 6px solid #bf8700; }
.warning strong { display: block; font-size: 17px; color: #7d4e00; margin-bottom: 4px; }
.warning ul { margin: 6px 0 0; padding-left: 20px; }
table { width: 100%; border-collapse: collapse; margin: 8px 0 4px; font-size: 14px; }
th, td { padding: 7px 10px; text-align: left; vertical-align: top; border-bottom: 1px solid var(--line); }
th { font-weight: 600; background: #fff; border-bottom: 2px solid var(--line); white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td .detail { display: block; color: var(--muted); font-size: 12px; }
table.compact td, table.compact th { padding: 4px 8px; font-size: 13px; }
th.group { text-align: center; border-bottom: 1px solid var(--line); }
th.group, .group-start { border-left: 1px solid var(--line); }
table.privacy th { vertical-align: bottom; }
table.privacy td:first-child { white-space: nowrap; }
table.size th { vertical-align: bottom; }
td.num .wrap { white-space: normal; }
ol.footnotes { margin: 6px 0 0; padding-left: 20px; color: var(--muted); font-size: 13px; }
.pill { display: inline-block; padding: 1px 10px; border-radius: 999px; font-weight: 700; font-size: 12px;
  letter-spacing: .03em; white-space: nowrap; }
.pill.pass { color: var(--pass); background: var(--pass-bg); }
.pill.fail { color: #fff; background: var(--fail); }
.pill.none { color: var(--none); background: var(--none-bg); }
.pill.warn { color: #7d4e00; background: var(--warn-bg); border: 1px solid #f2cc60; }
tr.failed td { background: #fff5f4; }
.untrusted { color: var(--warn); font-weight: 700; cursor: help; }
figure { margin: 12px 0 4px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 8px; }
figcaption { margin-top: 6px; color: var(--muted); font-size: 13px; }
.note { color: var(--muted); font-style: italic; }
.flag { margin: 10px 0; padding: 12px 16px; border: 1px solid var(--line); border-left: 5px solid var(--warn);
  border-radius: 8px; background: #fffdf3; }
.flag.masking { border-left-color: var(--fail); background: #fffafa; }
.flag .head { font-weight: 600; }
.flag .evidence { margin-top: 4px; }
details { margin: 12px 0; }
details summary { cursor: pointer; color: var(--accent); font-weight: 600; }
pre { background: var(--zebra); border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow-x: auto;
  font-size: 12px; line-height: 1.45; }
.scroll { overflow-x: auto; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; text-align: center; }
a { color: var(--accent); }
@media (max-width: 800px) { main { margin: 0; border-radius: 0; padding: 20px 16px 32px; } }
@media print { body { background: #fff; } main { box-shadow: none; margin: 0; max-width: none; } }
"""


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


#: Hover text of a gate's warning pill (the status the runner gave the gate).
GATE_TITLES = {
    "untrusted": "gradient masking detected on a model whose gradients made the adversarial examples",
    "invalid": "a model behind this value gave NaN or infinite outputs",
    "missing": "no value: not measured, or undefined",
}


def pill(passed: bool | None) -> str:
    if passed is None:
        return '<span class="pill none">UNDECIDED</span>'
    return '<span class="pill pass">PASS</span>' if passed else '<span class="pill fail">FAIL</span>'


def html_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
    css: str = "",
) -> str:
    """``rows`` hold HTML already escaped by the caller; ``numeric`` columns are right-aligned."""
    numeric = set(numeric)
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        klass = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{klass}>{cells}</tr>")
    klass = f' class="{css}"' if css else ""
    return (
        f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _cell_value(row: Row | None, untrusted: bool) -> str:
    if row is None:
        return '<span class="note">—</span>'
    text = esc(fmt_ci(row.value, row.ci95, row.metric))
    tip = []
    if row.ci95 is not None:
        tip.append(f"95% CI {fmt_interval(row.ci95, row.metric)}")
    if row.n is not None:
        tip.append(f"n = {row.n}")
    if tip:
        text = f'<span title="{esc(", ".join(tip))}">{text}</span>'
    if untrusted:
        text += ' <span class="untrusted" title="gradient masking detected: not to be trusted">⚠</span>'
    return text


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{content}\n</section>'


def _figure(png: bytes | None, alt: str, caption: str, missing: str) -> str:
    if png is None:
        return f'<p class="note">{esc(missing)}</p>'
    return f'<figure><img alt="{esc(alt)}" src="{data_uri(png)}"><figcaption>{esc(caption)}</figcaption></figure>'


def _privacy_cell(row: Row | None, privacy: Privacy) -> str:
    """The value alone, its interval and n in the tooltip: with a column per role and metric the table would
    not fit with "± half-width" in every cell."""
    if row is None:
        return '<span class="note">—</span>'
    if row.unresolvable:
        number = privacy.footnote(row)
        return (
            f'<span class="note wrap" title="{esc(row.note or NOT_RESOLVABLE)}">{NOT_RESOLVABLE}</span>'
            + (f"<sup>{number}</sup>" if number else "")
        )
    tip = [f"95% CI {fmt_interval(row.ci95, row.metric)}"] if row.ci95 is not None else []
    tip += [f"n = {row.n}"] if row.n is not None else []
    return f'<span title="{esc(", ".join(tip))}">{esc(fmt_value(row.value, row.metric))}</span>'


def _privacy_section(privacy: Privacy, plots: Mapping[str, bytes | None]) -> str:
    """The membership-inference table (a column group per role), its footnotes, then one ROC plot per probe."""
    num, start = ' class="num"', ' class="num group-start"'  # a role's first column draws the group's edge
    titles = [esc(title).replace("\n", "<br>") for title in MIA_METRICS.values()]
    head = (
        '<tr><th rowspan="2">Probe</th><th rowspan="2">Attacked with</th>'
        + "".join(f'<th class="group" colspan="{len(MIA_METRICS)}">{esc(role)}</th>' for role in privacy.roles)
        + "</tr><tr>"
        + "".join(
            f"<th{start if i == 0 else num}>{title}</th>" for _ in privacy.roles for i, title in enumerate(titles)
        )
        + "</tr>"
    )
    # The set sizes go in the caption when every row shares them (the usual case), else under each row's view.
    sizes = {entry.sizes() for entry in privacy.rows}
    body = []
    for entry in privacy.rows:
        kind = f'<span class="detail">{esc(entry.kind)}</span>' if entry.kind != entry.probe else ""
        size = "" if len(sizes) == 1 else f'<span class="detail">members / non-members {esc(entry.sizes())}</span>'
        cells = [f"<td>{esc(entry.probe)}{kind}</td>", f"<td>{esc(VIEWS[entry.view])}{size}</td>"]
        for role in privacy.roles:
            for i, metric in enumerate(MIA_METRICS):
                value = _privacy_cell(entry.cells.get(role, {}).get(metric), privacy)
                cells.append(f"<td{start if i == 0 else num}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    content = [
        f"<p>{esc(PRIVACY_INTRO)}</p>",
        f'<div class="scroll"><table class="compact privacy"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        "</table></div>",
        '<p class="note">'
        + (f"Members / non-members: {esc(next(iter(sizes)))} for every row. " if len(sizes) == 1 else "")
        + "Hover a value for its 95% confidence interval and n.</p>",
    ]
    footnotes = privacy.footnotes()
    if footnotes:
        content.append('<ol class="footnotes">' + "".join(f"<li>{esc(n)}</li>" for n in footnotes) + "</ol>")
    for probe in privacy.probes:
        content.append(
            _figure(
                plots.get(ROC_KEY + probe),
                f"Log-log ROC curves of membership inference attack {probe}, one line per model and member set",
                "True-positive against false-positive rate, both on log axes so the low-FPR corner is readable. Solid: "
                "each model attacked with its own members; dashed: with the teacher's members; dotted: chance.",
                f"No ROC curves for {probe}.",
            )
        )
        content += [f'<p class="note">{esc(probe)}: {esc(note)}.</p>' for note in privacy.notes.get(probe, [])]
    return _section("privacy", "Membership inference (privacy)", "\n".join(content))


def _size_section(size: Size, threat: str, png: bytes | None, masked: set[str]) -> str:
    """The models by size, smallest first: parameters, MACs, clean accuracy and robust accuracy per attack, then the
    plot of accuracy against parameters."""
    num = ' class="num"'
    robust = [c for c in size.columns if c.robust]
    clean = [c for c in size.columns if not c.robust]

    def head(column: SizeColumn) -> str:
        tip = f' title="{esc(column.detail)}"' if column.detail else ""
        return f'<th class="num"{tip}>{esc(column.title)}</th>'

    rowspan = ' rowspan="2"' if robust else ""
    header = (
        f"<tr><th{rowspan}>Model</th><th{rowspan}{num}>Parameters</th><th{rowspan}{num}>MACs</th>"
        + "".join(f'<th{rowspan}{num}>Clean accuracy</th>' for _ in clean)
        + (f'<th class="group" colspan="{len(robust)}">Robust accuracy</th></tr><tr>' if robust else "")
        + "".join(head(c) for c in robust)
        + "</tr>"
    )
    body = []
    for model in size.models:
        macs = model.macs
        exact = esc(fmt_value(model.parameters.value, "parameters"))
        cells = [
            f"<td>{esc(model.role)}</td>",
            f'<td class="num"><span title="{exact} parameters">{esc(fmt_size(model.parameters.value))}</span></td>',
        ]
        if macs is not None:
            exact = esc(fmt_value(macs.value, "macs"))
            cells.append(f'<td class="num"><span title="{exact} MACs">{esc(fmt_size(macs.value))}</span></td>')
        else:
            cells.append('<td class="num"><span class="note">—</span></td>')
        for column in [*clean, *robust]:
            found = column.cells.get(model.role)
            value = _cell_value(found, column.robust and model.role in masked)
            cells.append(f"<td{num}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    content = [
        f"<p>{esc(size.intro(threat))}</p>",
        f'<div class="scroll"><table class="size"><thead>{header}</thead><tbody>{"".join(body)}</tbody></table></div>',
        '<p class="note">Hover a value for its 95% confidence interval and n, a size for the exact count.</p>',
        _figure(
            png,
            "Clean and robust accuracy against the number of parameters, one line per metric, one point per model",
            "Accuracy against parameters (log scale): one line per metric, the teacher a star.",
            "No plot of accuracy against size.",
        ),
    ]
    return _section("size", SIZE_TITLE, "\n".join(content))


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


# Words of a metric name that say its value is not a fraction. Matched as whole words of the snake_case name, so
# an attack called "cw-linf" still reads as an accuracy while "median_linf" does not.
NOT_FRACTIONS = frozenset({"auc", "l2", "linf", "norm", "loss", "time", "seconds", "eps", "dist", "distance", "count", "n",
                           "queries", "steps"})


def fmt_summary(key: str, value: Any) -> str:
    """An index summary value: fractions (accuracy-like names, or any value in [0, 1] whose name does not say it
    is a distance, loss, time or count) as percentages, the rest as numbers."""
    number = to_float(value)
    if number is None or isinstance(value, bool):
        return fmt_value(value, key)
    words = set(re.split(r"[_\s]+", key.lower()))
    if is_fraction(key) or (0.0 <= number <= 1.0 and not words & NOT_FRACTIONS):
        return fmt_value(number, "accuracy")
    return fmt_value(number, key)


def render_index_html(entries: Sequence[Mapping[str, Any]], title: str) -> str:
    """The demo's index: one row per audited student, linking its report.html."""
    metrics: list[str] = []
    for entry in entries:
        summary = entry.get("summary")
        if isinstance(summary, Mapping):
            metrics += [str(k) for k in summary if str(k) not in metrics]
    header = ["Report", "Teacher", "Student", "Verdict", "Flags", *map(esc, metrics)]
    rows, classes = [], []
    for entry in entries:
        name = esc(entry.get("name") or entry.get("report") or "?")
        link = entry.get("report")
        cell = f'<a href="{esc(link)}"><strong>{name}</strong></a>' if link else f"<strong>{name}</strong>"
        passed = entry.get("passed")
        flags = to_float(entry.get("flags"))
        flag_text = '<span class="note">0</span>'
        if flags:
            flag_text = f'<span class="pill warn" title="see the report\'s Flags section">⚠ {int(flags)}</span>'
        summary = entry.get("summary") if isinstance(entry.get("summary"), Mapping) else {}
        values = [esc(fmt_summary(m, summary.get(m))) for m in metrics]
        rows.append(
            [
                cell,
                esc(entry.get("teacher", "—")),
                esc(entry.get("student", "—")),
                pill(passed if isinstance(passed, bool) else None),
                flag_text,
                *values,
            ]
        )
        classes.append("failed" if passed is False else "")
    n_pass = sum(1 for e in entries if e.get("passed") is True)
    body = (
        f'<header><p class="eyebrow">robustdistill</p><h1>{esc(title)}</h1>'
        f'<p class="sub">{len(entries)} report{"s" if len(entries) != 1 else ""} · {n_pass} passed</p></header>'
        + _section(
            "reports",
            "Reports",
            html_table(header, rows, numeric=range(5, len(header)), row_classes=classes)
            + '<p class="note">Summary values are the student\'s; percentages are accuracies. A flag count '
            "above zero means a check (e.g. gradient masking) fired: read that report's warning.</p>",
        )
        + f"<footer>rendered {esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}</footer>"
    )
    return page(title, body)
