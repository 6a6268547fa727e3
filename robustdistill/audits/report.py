"""The audit's outcome: the :class:`Report` dataclass (report.json's content) and its summary text.

``Report`` holds what one audit produced (suite, manifest, result rows, gates, flags) and the single verdict
decided from them (robustdistill.audits.verdict); ``summary()`` is the teacher-vs-student table, membership
inference table, flags, gates and verdict that the CLI prints. ``ROW_KEYS`` are the keys of a report.json result
row, in column order. The report is built from the run store by robustdistill.audits.build; the runner
(robustdistill.audits.runner) returns one from ``audit()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustdistill.audits import masking
from robustdistill.audits.probes import NON_FINITE
from robustdistill.audits.verdict import decide, flagged_checks

if TYPE_CHECKING:
    import pandas as pd

ROW_KEYS = ("probe", "model", "metric", "value", "ci95", "n", "params")


# --------------------------------------------------------------------------------------------------------------
# The report


@dataclass(repr=False)  # the generated repr dumped every row and the manifest (25 KB in a notebook)
class Report:
    """An audit's outcome; ``to_dict()`` is report.json (DESIGN.md).

    ``verdict``: the one decision (robustdistill.audits.verdict) that the CLI, the exit code and every rendered
    report show; ``passed`` is its ``passed``: every gate passed, every planned unit finished, no model gave
    non-finite outputs and none is flagged for gradient masking (unless the suite's ``[verdict]`` opts out).
    ``results``: a DataFrame, one row per (probe, model, metric[, params]). ``flags``: gradient-masking and
    ``non_finite_outputs`` flags with evidence. ``gates``: each gate with its value, ``passed`` and ``status``
    ("passed", "failed", "untrusted", "invalid" or "missing"). ``untrusted``: the models whose robust accuracy is
    not to be trusted (flagged for gradient masking).
    """

    suite: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    run_dir: Path | None = None
    missing: list[str] = field(default_factory=list)
    rendered: list[Path] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)
    # Report sections in suite order: {"group", "family", "probes": [probe names]} (robustdistill.reports renders
    # each group with the section registered for it).
    sections: list[dict[str, Any]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # the family's report artifacts (e.g. examples.npz)

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = decide(self.gates, self.flags, self.missing, self.suite.get("verdict"),
                                  self.manifest.get("chain"))

    def __repr__(self) -> str:
        """What a REPL or notebook shows: the summary the CLI prints, under one line naming the run."""
        where = f" in {self.run_dir}" if self.run_dir is not None else ""
        return f"audit report of suite {self.suite.get('name', '?')!r}{where}\n{self.summary()}"

    def _repr_html_(self) -> str:
        """Jupyter's rendering: the same text, monospaced so that the table's columns line up."""
        import html

        return f"<pre>{html.escape(repr(self))}</pre>"

    @property
    def passed(self) -> bool:
        return bool(self.verdict["passed"])

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def exit_code(self) -> int:
        """0 when every gate passed, 1 otherwise (DESIGN.md's exit codes of ``robustdistill audit``)."""
        return 0 if self.passed else 1

    @property
    def untrusted(self) -> list[str]:
        return sorted({f["model"] for f in self.flags if f.get("kind") == masking.KIND})

    @property
    def results(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(ROW_KEYS))

    def value(self, model: str, probe: str, metric: str, **params: Any) -> float | None:
        """The value of the single row matching (model, probe, metric) and any given params."""
        matches = [r for r in self.rows if r["model"] == model and r["probe"] == probe and r["metric"] == metric
                   and all(r["params"].get(k) == v for k, v in params.items())]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows match {model}.{probe}.{metric} {params or ''}".strip())
        return matches[0]["value"]

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "manifest": self.manifest, "results": self.rows, "gates": self.gates,
                "flags": self.flags, "verdict": self.verdict, "sections": self.sections}

    def summary(self) -> str:
        """A short teacher-vs-student table, the flags, the gates and the verdict (what the CLI prints)."""
        roles = list(self.manifest.get("checkpoints", {})) or sorted({r["model"] for r in self.rows})
        lines: list[str] = []
        if "language-model" in set((self.manifest.get("families") or {}).values()):
            table = self._language_table(roles) + self._bias_table(roles)
            lines += _table_lines(roles, table)
            return "\n".join(lines + self._verdict_lines())
        if "diffusion" in set((self.manifest.get("families") or {}).values()):
            lines += _table_lines(roles, self._diffusion_table(roles))
            return "\n".join(lines + self._verdict_lines())
        table: list[tuple[str, list[str]]] = []
        retention = {(r["model"], r["params"].get("of")): r for r in self.rows if r["probe"] == "retention"}
        show_retention = "student" in roles and "teacher" in roles
        for row in self.rows:
            if row["model"] != roles[0] or row["metric"] not in ("accuracy", "robust_accuracy"):
                continue
            if row["probe"] != "clean" and "attack" not in row["params"] or "check" in row["params"]:
                continue
            if row["probe"] in ("curve",):
                continue
            cells = []
            for role in roles:
                other = next((r for r in self.rows if r["model"] == role and r["probe"] == row["probe"]
                              and r["metric"] == row["metric"] and r["params"] == row["params"]), None)
                text = _pct(other["value"]) if other else "-"
                if other and role in self.untrusted and row["probe"] != "clean":
                    text += " *"
                cells.append(text)
            if show_retention:
                ret = retention.get(("student", row["probe"]))
                cells.append(_pct(ret["value"]) if ret else "-")
            label = "clean accuracy" if row["probe"] == "clean" else f"{row['probe']} robust accuracy"
            table.append((label, cells))
        lines += _table_lines(roles + (["retention"] if show_retention else []), table)
        lines.extend(self._privacy_summary(roles))
        return "\n".join(lines + self._verdict_lines())

    def _language_table(self, roles: list[str]) -> list[tuple[str, list[str]]]:
        """Language models: each headline metric of each probe (refusal, task accuracy, jailbreak and transfer
        success, ALO-ASR, membership AUC), one column per model."""
        table: list[tuple[str, list[str]]] = []
        for metric, label in LANGUAGE_HEADLINES:
            probes = list(dict.fromkeys(r["probe"] for r in self.rows if r["metric"] == metric))
            for probe in probes:
                cells = []
                for role in roles:
                    row = next((r for r in self.rows if r["probe"] == probe and r["model"] == role
                                and r["metric"] == metric), None)
                    cells.append(_value_text(row, metric))
                table.append((f"{label} ({probe})" if len(probes) > 1 else label, cells))
        return table

    def _bias_table(self, roles: list[str]) -> list[tuple[str, list[str]]]:
        """Bias poisoning, per bias type: its rate per task split, the students' amplification of their teacher's rate
        (a ratio), and what the training-data defences caught (on the poisoned model only)."""
        names = {p["name"] for p in self.suite.get("probes", []) if p.get("kind") in BIAS_PROBES}
        bias_rows = [r for r in self.rows if r["probe"] in names]
        metrics = list(dict.fromkeys(r["metric"] for r in bias_rows))
        biases = list(dict.fromkeys(m.split("/")[0] for m in metrics))

        def order(metric: str) -> tuple[int, int, int]:
            parts = metric.split("/")
            kind = 2 if parts[1] == "catch" else 1 if parts[-1] == "amplification" else 0
            return biases.index(parts[0]), kind, metrics.index(metric)

        table: list[tuple[str, list[str]]] = []
        for metric in sorted(metrics, key=order):
            parts = metric.split("/")
            if parts[-1] == "perplexity-auc" or (parts[1] == "catch" and parts[2] not in BIAS_DEFENCES_SHOWN):
                continue  # in the report: the perplexity filter's AUC and its 1% and 10% false-positive rates
            cells = []
            for role in roles:
                row = next((r for r in bias_rows if r["model"] == role and r["metric"] == metric), None)
                if row is None or row["value"] is None:
                    cells.append("-")
                else:
                    cells.append(f"{row['value']:.2f}x" if parts[-1] == "amplification" else _pct(row["value"]))
            if all(cell == "-" for cell in cells):
                continue  # e.g. the targeted rate of a bias whose target family the data lacks
            what = {"amplification": f"amplification, {parts[1]}"}.get(parts[-1]) or (
                f"poison caught, {parts[2]}" if parts[1] == "catch" else f"bias rate, {parts[1]}")
            table.append((f"{parts[0]}: {what}", cells))
        return table

    def _diffusion_table(self, roles: list[str]) -> list[tuple[str, list[str]]]:
        """Diffusion models: sampling steps, class accuracy, Fréchet distance and speed; each membership attack's
        AUC at its calibrated t ("n/a" where it does not apply: a one-step generator's white-box scores)."""
        table: list[tuple[str, list[str]]] = []

        def cells(probe: str, metric: str, text: Any) -> list[str]:
            out = []
            for role in roles:
                row = next((r for r in self.rows if r["probe"] == probe and r["model"] == role
                            and r["metric"] == metric), None)
                applies = row is not None and not str(row["params"].get("note", "")).startswith("not applicable")
                out.append(text(row) if applies else "n/a" if row is not None else "-")
            return out

        for probe in dict.fromkeys(r["probe"] for r in self.rows if r["metric"] == "class_accuracy"):
            table.append(("sampling steps", cells(probe, "class_accuracy", lambda r: str(r["params"].get("steps")))))
            for metric, label in DIFFUSION_QUALITY:
                table.append((label, cells(probe, metric, lambda r, m=metric: _speed(r["value"])
                                           if m == "samples_per_second" else _value_text(r, m))))
        for probe in dict.fromkeys(r["probe"] for r in self.rows if r["metric"] == "forget_accuracy"):
            table.append(("sampling steps", cells(probe, "forget_accuracy", lambda r: str(r["params"].get("steps")))))
            for metric, label in UNLEARNING_FORGETTING:
                table.append((label, cells(probe, metric, lambda r, m=metric: _speed(r["value"])
                                           if m == "samples_per_second" else _value_text(r, m))))
        for probe in dict.fromkeys(r["probe"] for r in self.rows if r["metric"] == "removal_rate"):
            for metric, label in UNLEARNING_BACKDOOR:
                table.append((label, cells(probe, metric, lambda r, m=metric: _value_text(r, m))))
        mia_probes = list(dict.fromkeys(r["probe"] for r in self.rows if r["metric"] in ("nearest_auc", "loss_auc")))
        for probe in mia_probes:
            named = f" ({probe})" if len(mia_probes) > 1 else ""  # which one, when there are several
            for attack in ("loss", "pia", "secmi", "nearest"):
                metric = f"{attack}_auc"
                if any(r["probe"] == probe and r["metric"] == metric for r in self.rows):
                    table.append((f"MIA {attack} AUC{named}", cells(probe, metric, lambda r, m=metric: _value_text(r, m)
                                                             + (f" (t={r['params']['t']})" if "t" in r["params"]
                                                                and r["value"] is not None else ""))))
        return table

    def _verdict_lines(self) -> list[str]:
        lines: list[str] = []
        if self.untrusted:
            lines.append("* not to be trusted: gradient masking flagged for " + ", ".join(self.untrusted))
        invalid = flagged_checks(self.flags, NON_FINITE)
        if invalid:
            lines.append("invalid: NaN or infinite outputs from " + ", ".join(invalid) + "; every gate on them fails")
        for item in self.flags:
            lines.append(f"FLAG {item['model']}: {item['check']}: {item['evidence']}")
        for gate in self.gates:
            value = "missing" if gate["value"] is None else f"{gate['value']:.4g}"
            note = f" ({gate['note']})" if gate.get("note") else ""
            lines.append(f"{gate['status'].upper():<9} {gate['metric']} {gate['op']} {gate['threshold']:g}: {value}{note}")
        if self.missing:
            lines.append(f"INCOMPLETE: {len(self.missing)} probe unit(s) did not finish; continue with --resume")
        lines += [f"warning: {note}" for note in self.verdict.get("notes", [])]
        lines.append(f"verdict: {self.verdict['summary']}")
        return lines

    def _privacy_summary(self, roles: list[str]) -> list[str]:
        """Membership inference: per probe and ground truth, each model's AUC and TPR at 0.1% and 1% FPR."""
        probes = [p["name"] for p in self.suite.get("probes", []) if str(p.get("kind", "")).startswith("mia-")]
        if not probes:
            return []
        metrics = (("auc", "AUC"), ("tpr_at_0_1pct_fpr", "TPR@0.1%"), ("tpr_at_1pct_fpr", "TPR@1%"))
        table: list[tuple[str, list[str]]] = []
        for name in probes:
            for prefix, view in (("", "own members"), ("teacher_members_", "teacher's members")):
                cells = []
                for role in roles:
                    for metric, _ in metrics:
                        row = next((r for r in self.rows if r["probe"] == name and r["model"] == role
                                    and r["metric"] == prefix + metric), None)
                        if row is None:
                            cells.append("-")
                        elif row["value"] is None:
                            cells.append("n/r")
                        else:
                            cells.append(f"{row['value']:.3f}" if metric == "auc" else _pct(row["value"]))
                if any(c != "-" for c in cells):
                    table.append((f"{name} ({view})", cells))
        width = max([len(label) for label, _ in table] + [len("membership inference")])
        group = 3 * 8 + 2
        lines = [f"{'membership inference':<{width}}  " + " ".join(f"{role:^{group}}" for role in roles),
                 f"{'':<{width}}  " + " ".join(" ".join(f"{label:>8}" for _, label in metrics) for _ in roles)]
        lines += [f"{label:<{width}}  " + " ".join(" ".join(f"{c:>8}" for c in cells[i:i + 3])
                                                   for i in range(0, len(cells), 3)) for label, cells in table]
        if any("n/r" in cells for _, cells in table):
            lines.append("n/r: not resolvable (too few non-members for that false-positive rate)")
        return lines


#: The language-model summary's rows, in reading order: metric -> label.
LANGUAGE_HEADLINES = (
    ("refusal_rate", "refusal rate"), ("benign_refusal_rate", "over-refusal"), ("accuracy", "task accuracy"),
    ("held_out_accuracy", "held-out task accuracy"), ("direct_asr", "direct-request ASR"),
    ("init_suffix_asr", "unoptimised-suffix ASR"), ("asr", "GCG ASR"),
    ("transfer_asr", "transfer ASR, teacher's suffixes"), ("reverse_transfer_asr", "transfer ASR onto the teacher"),
    ("alo_asr", "ALO-ASR"), ("loss_auc", "MIA AUC, loss"), ("zlib_auc", "MIA AUC, zlib"),
    ("min_k_auc", "MIA AUC, min-k%"), ("min_k_plus_plus_auc", "MIA AUC, min-k%++"),
    ("reference_auc", "MIA AUC, reference"),
)


#: The diffusion summary's quality metrics.
DIFFUSION_QUALITY = (("class_accuracy", "class accuracy"), ("frechet_distance", "Frechet distance"),
                     ("samples_per_second", "samples per second"))
UNLEARNING_FORGETTING = (("forget_accuracy", "forget accuracy"), ("override_rate", "read as override"),
                         ("retain_accuracy", "retained accuracy"), ("retain_frechet_distance", "retained Frechet"),
                         ("samples_per_second", "samples per second"))
UNLEARNING_BACKDOOR = (("attack_success_rate", "backdoor attack success"), ("false_trigger_rate", "false triggers"),
                       ("removal_rate", "backdoor removal rate"), ("clean_agreement", "clean-prompt agreement"),
                       ("clean_pixel_distance", "clean pixel change"),
                       ("triggered_pixel_distance", "triggered pixel change"))
#: The bias summary's probes, and the defences whose catch rates it shows (the report has every false-positive rate).
BIAS_PROBES = ("bias-propagation", "poison-filters")
BIAS_DEFENCES_SHOWN = ("generic-detector", "bias-detector", "perplexity@5%")


def _table_lines(header: list[str], table: list[tuple[str, list[str]]]) -> list[str]:
    width = max([len(label) for label, _ in table] + [10])
    # a long role name (perplexity_filtered) or value ("0.585 (t=100)") widens its column
    columns = [max([10, len(h)] + [len(cells[i]) for _, cells in table if i < len(cells)])
               for i, h in enumerate(header)]
    lines = [f"{'':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, columns))]
    return lines + [f"{label:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, columns))
                    for label, cells in table]


def _value_text(row: Mapping[str, Any] | None, metric: str) -> str:
    """A rate or accuracy as a percentage, anything else (an AUC, a loss) with three decimals; "-" when missing."""
    from robustdistill.reports.records import is_fraction  # the reports' own rule for which metrics are fractions

    if row is None or row["value"] is None:
        return "-"
    return _pct(row["value"]) if is_fraction(metric) else f"{row['value']:.3f}"


def _speed(value: Any) -> str:
    """Samples per second in three significant figures (``53.6``, ``2,500``): a timing has no more precision."""
    return "-" if value is None else f"{float(f'{value:.3g}'):,.0f}" if value >= 100 else f"{value:.3g}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"

