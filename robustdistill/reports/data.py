"""Reading a finished run for rendering: report.json (DESIGN.md, "report.json"), artifacts/examples.npz and the
membership-inference ROC curves artifacts/roc-<probe>-<role>.npz.

Reading is tolerant on purpose: a row the renderer does not understand is still shown in the full results
table, never a reason to fail. Only a missing or unparseable report.json is an error (a :class:`UserInputError`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

#: Probes whose rows go in their own section rather than the teacher-vs-student table.
SPECIAL_PROBES = frozenset({"curve", "transfer", "retention", "agreement", "masking"})
#: Metric name parts that mean "a fraction in [0, 1]", shown as a percentage.
FRACTION_WORDS = ("accuracy", "rate", "agreement", "retention", "fraction", "precision", "recall", "coverage", "tpr")
ROLE_ORDER = ("teacher", "student")

#: Probe kinds whose rows form the membership-inference (privacy) section.
MIA_KINDS = frozenset({"mia-loss", "mia-confidence", "mia-lira"})
#: Metrics of the privacy table, with their column titles (the line breaks are for the narrow HTML columns).
MIA_METRICS = {
    "auc": "AUC",
    "balanced_accuracy": "Balanced\naccuracy",
    "tpr_at_0_1pct_fpr": "TPR @\n0.1% FPR",
    "tpr_at_1pct_fpr": "TPR @\n1% FPR",
}
#: A non-teacher model attacked with the teacher's members: the same metrics under this prefix.
TEACHER_MEMBERS = "teacher_members_"
VIEWS = {"own": "own members", "teacher": "teacher's members"}
#: Plot key of a membership-inference probe's ROC: ROC_KEY + probe name.
ROC_KEY = "roc:"
NOT_RESOLVABLE = "not resolvable"
PRIVACY_INTRO = (
    "Membership inference asks whether someone who can query a model can tell if a given example was in its "
    "training set; any success beyond guessing leaks private training data. Each attack scores known members and "
    "non-members, and the table shows how well that score separates them. AUC and balanced accuracy average over "
    "all thresholds: an AUC near 0.5 means no measurable leakage. The true-positive rate at a low false-positive "
    "rate matters most: an attack that confidently picks out even a few members is a real breach although its "
    "average-case numbers look harmless (Carlini et al. 2022, “Membership Inference Attacks From First "
    "Principles”, which introduced LiRA). Rows on the teacher's members attack the student (and any other model) "
    "with the teacher's training examples: leakage there means distillation passed the teacher's membership "
    "signal on."
)


#: Probe kinds whose rows give each model's size; with two or more sized models the report gets the size section.
SIZE_KINDS = frozenset({"size"})
#: Metrics that count things (shown as whole numbers with thousands separators).
COUNT_METRICS = frozenset({"parameters", "macs"})
SIZE_TITLE = "Accuracy and robustness against size"


def role_sort_key(role: str) -> tuple[int, str]:
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), role)


def order_roles(roles: Iterable[str]) -> list[str]:
    return sorted(dict.fromkeys(roles), key=role_sort_key)


def to_float(value: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, strings that are not numbers, lists...)."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def is_fraction(metric: str) -> bool:
    name = metric.rsplit(".", 1)[-1].lower()
    return any(word in name for word in FRACTION_WORDS)


def fmt_value(value: Any, metric: str = "") -> str:
    """Percentages with one decimal for fractions (accuracy, rates...), three decimals otherwise; '—' if missing."""
    number = to_float(value)
    if number is None:
        return (
            "—"
            if value is None or isinstance(value, float) or (isinstance(value, str) and value.lower() == "nan")
            else str(value)
        )
    if is_fraction(metric):
        return f"{number * 100:.1f}%"
    if metric.rsplit(".", 1)[-1].lower() in COUNT_METRICS and number.is_integer():
        return f"{int(number):,}"
    if abs(number) >= 1e4:
        return f"{number:.4g}"
    return f"{number:.3f}"


def fmt_size(value: Any) -> str:
    """A count in three significant figures with k / M / G (``85.1 k``, ``1.2 M``); '—' if missing."""
    number = to_float(value)
    if number is None:
        return "—"
    scaled, unit = number, ""
    for bigger in ("k", "M", "G", "T"):
        if abs(float(f"{scaled:.3g}")) < 1000:
            break
        scaled, unit = scaled / 1000, bigger
    if not unit:
        return f"{scaled:.0f}"
    return f"{scaled:.3g} {unit}"


def fmt_ci(value: Any, ci95: tuple[float, float] | None, metric: str = "") -> str:
    """``61.0 ± 4.0%`` (half-width of the 95% interval) or ``0.842 ± 0.031``; just the value without a CI."""
    number = to_float(value)
    if number is None or ci95 is None:
        return fmt_value(value, metric)
    half = (ci95[1] - ci95[0]) / 2
    if is_fraction(metric):
        return f"{number * 100:.1f} ± {half * 100:.1f}%"
    return f"{number:.3f} ± {half:.3f}"


def fmt_row(row: Row) -> str:
    """:func:`fmt_value`, except that a TPR the probe could not resolve reads "not resolvable": a blank or 0 there
    would read as "the attack found nothing" when the run simply had too few non-members to measure it."""
    return NOT_RESOLVABLE if row.unresolvable else fmt_value(row.value, row.metric)


def fmt_interval(ci95: tuple[float, float] | None, metric: str = "") -> str:
    if ci95 is None:
        return "—"
    return f"[{fmt_value(ci95[0], metric)}, {fmt_value(ci95[1], metric)}]"


def fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt_param(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_param(v)}" for k, v in value.items()) + "}"
    return str(value)


def fmt_params(params: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    return ", ".join(f"{k}={fmt_param(v)}" for k, v in params.items() if k not in skipped)


def humanise(metric: str) -> str:
    """``robust_accuracy`` -> ``Robust accuracy``."""
    text = metric.replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else "?"


@dataclass(frozen=True)
class Row:
    probe: str
    model: str
    metric: str
    value: float | None
    ci95: tuple[float, float] | None
    n: int | None
    params: dict[str, Any]
    raw: Any = field(compare=False, repr=False, default=None)

    @property
    def label(self) -> str:
        """What the row measured: the probe's ``name``, else its attack, else the probe."""
        return str(self.params.get("name") or self.params.get("attack") or self.probe)

    @property
    def eps(self) -> float | None:
        return to_float(self.params.get("eps"))

    @property
    def unresolvable(self) -> bool:
        return self.value is None and (self.params.get("resolvable") is False or "tpr_at_" in self.metric)

    @property
    def note(self) -> str:
        return str(self.params.get("note") or "")

    @classmethod
    def parse(cls, raw: Any) -> Row:
        if not isinstance(raw, Mapping):
            return cls("?", "?", "?", None, None, None, {"row": raw}, raw)
        params = raw.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, Mapping):
            params = {"params": params}
        ci = raw.get("ci95")
        ci95: tuple[float, float] | None = None
        if isinstance(ci, list | tuple) and len(ci) == 2:
            lo, hi = to_float(ci[0]), to_float(ci[1])
            if lo is not None and hi is not None:
                ci95 = (min(lo, hi), max(lo, hi))
        n = to_float(raw.get("n"))
        return cls(
            probe=str(raw.get("probe") or "?"),
            model=str(raw.get("model") or "?"),
            metric=str(raw.get("metric") or "?"),
            value=to_float(raw.get("value")),
            ci95=ci95,
            n=int(n) if n is not None else None,
            params=dict(params),
            raw=raw,
        )


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: Any
    value: Any
    passed: bool | None
    status: str | None = None  # "passed", "failed", "untrusted", "invalid" or "missing" (older files: none)

    @property
    def role(self) -> str:
        return self.metric.split(".", 1)[0] if "." in self.metric else ""

    def warning(self, masked_roles: Iterable[str]) -> str | None:
        """Why a gate's value is not to be taken at face value: its status when the runner recorded one
        ("untrusted", "invalid", "missing"), else (older files) "untrusted" for a robust metric of a masked model."""
        if self.status is not None:
            return self.status if self.status in GATE_WARNINGS else None
        return "untrusted" if self.role in set(masked_roles) and "robust" in self.metric else None

    @classmethod
    def parse(cls, raw: Any) -> Gate:
        if not isinstance(raw, Mapping):
            return cls(str(raw), "?", None, None, None)
        op = str(raw.get("op") or "?")
        passed = raw.get("passed")
        if not isinstance(passed, bool):
            passed = _compare(to_float(raw.get("value")), op, to_float(raw.get("threshold")))
        status = raw.get("status") if isinstance(raw.get("status"), str) else None
        return cls(str(raw.get("metric") or "?"), op, raw.get("threshold"), raw.get("value"), passed, status)


#: Gate statuses that the reports mark next to the result (the value alone would mislead).
GATE_WARNINGS = ("untrusted", "invalid", "missing")
LEGACY_VERDICT = ("Derived from the gates alone: this report.json predates stored verdicts, so flags and unfinished "
                  "probe units were not counted; re-run `robustdistill report` on the run to decide it fully.")


@dataclass(frozen=True)
class Verdict:
    """The verdict report.json stores (robustdistill.audits.verdict: the same one the CLI printed and the exit code
    gave): ``passed``, ``summary`` ("FAIL (1 of 3 gates failed; ...)"), the ``reasons`` it failed and ``notes``."""

    passed: bool
    summary: str
    reasons: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def detail(self) -> str:
        """The summary without its leading PASS/FAIL: "1 of 3 gates failed; gradient masking: student (...)"."""
        text = self.summary.strip()
        if text.startswith(self.word):
            text = text[len(self.word) :].strip()
            if text.startswith("(") and text.endswith(")"):
                text = text[1:-1]
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") or not text else ".")

    @classmethod
    def parse(cls, raw: Any) -> Verdict | None:
        """None when report.json has no usable verdict (written before verdicts were stored, or damaged)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("passed"), bool):
            return None

        def texts(key: str) -> tuple[str, ...]:
            items = raw.get(key)
            out = []
            for item in items if isinstance(items, list | tuple) else []:
                text = item.get("text") if isinstance(item, Mapping) else item
                if text is not None:
                    out.append(str(text))
            return tuple(out)

        passed = raw["passed"]
        summary = raw.get("summary") if isinstance(raw.get("summary"), str) else ("PASS" if passed else "FAIL")
        return cls(passed, summary, texts("reasons"), texts("notes"))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _compare(value: float | None, op: str, threshold: float | None) -> bool | None:
    if value is None or threshold is None:
        return None
    ops = {
        ">=": value >= threshold,
        ">": value > threshold,
        "<=": value <= threshold,
        "<": value < threshold,
        "==": value == threshold,
        "min": value >= threshold,
        "max": value <= threshold,
    }
    return ops.get(op)


@dataclass(frozen=True)
class Flag:
    kind: str
    model: str
    check: str
    evidence: str
    extra: dict[str, Any]

    @property
    def is_masking(self) -> bool:
        return "masking" in self.kind.lower()

    @classmethod
    def parse(cls, raw: Any) -> Flag:
        if not isinstance(raw, Mapping):
            return cls("flag", "?", "", str(raw), {})
        known = {"kind", "model", "check", "evidence"}
        evidence = raw.get("evidence")
        if evidence is not None and not isinstance(evidence, str):
            evidence = json.dumps(evidence, default=str)
        return cls(
            str(raw.get("kind") or "flag"),
            str(raw.get("model") or "?"),
            str(raw.get("check") or ""),
            evidence or "",
            {k: v for k, v in raw.items() if k not in known},
        )


@dataclass
class Report:
    """report.json, read tolerantly."""

    suite: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[Row]
    gates: list[Gate]
    flags: list[Flag]
    raw: dict[str, Any]
    stored_verdict: Verdict | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Report:
        def mapping(key: str) -> dict[str, Any]:
            value = raw.get(key)
            return dict(value) if isinstance(value, Mapping) else {}

        def items(key: str) -> list[Any]:
            value = raw.get(key)
            return list(value) if isinstance(value, list | tuple) else []

        return cls(
            suite=mapping("suite"),
            manifest=mapping("manifest"),
            rows=[Row.parse(r) for r in items("results")],
            gates=[Gate.parse(g) for g in items("gates")],
            flags=[Flag.parse(f) for f in items("flags")],
            raw=dict(raw),
            stored_verdict=Verdict.parse(raw.get("verdict")),
        )

    @classmethod
    def load(cls, path: Path) -> Report:
        if not path.is_file():
            raise UserInputError(
                "run_dir",
                f"no report.json in {path.parent}",
                "run `robustdistill audit` first, or point at a run directory",
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserInputError(
                "report.json", f"{path} cannot be read as JSON ({error})", "re-run the audit to rewrite it"
            ) from None
        if not isinstance(raw, Mapping):
            raise UserInputError(
                "report.json", f"{path} holds a {type(raw).__name__}, not an object", "re-run the audit to rewrite it"
            )
        return cls.from_dict(raw)

    # --- summaries ----------------------------------------------------------------------------------------
    @property
    def suite_name(self) -> str:
        return str(self.suite.get("name") or "audit")

    @property
    def passed(self) -> bool | None:
        """The stored verdict's ``passed``. For a report.json without one (older files), derived the old way from the
        gates: False when any gate failed; True when every gate passed; None when there are no gates or some could
        not be decided (a malformed gate never lets a run pass)."""
        if self.stored_verdict is not None:
            return self.stored_verdict.passed
        results = [g.passed for g in self.gates]
        if False in results:
            return False
        if not results or None in results:
            return None
        return True

    @property
    def masked_roles(self) -> list[str]:
        return order_roles(f.model for f in self.flags if f.is_masking)

    @property
    def roles(self) -> list[str]:
        found = [r.model for r in self.rows if r.model != "?"]
        found += list(self.checkpoints)
        return order_roles(found)

    @property
    def checkpoints(self) -> dict[str, dict[str, Any]]:
        value = self.manifest.get("checkpoints")
        if not isinstance(value, Mapping):
            return {}
        return {str(k): (dict(v) if isinstance(v, Mapping) else {"path": str(v)}) for k, v in value.items()}

    def threat_model(self) -> str:
        tm = self.suite.get("threat_model")
        if isinstance(tm, Mapping):
            norm = tm.get("norm")
            eps = to_float(tm.get("eps"))
            parts = [str(norm).replace("linf", "L∞").replace("l2", "L2")] if norm else []
            if eps is not None:
                parts.append(f"ε = {eps:.4g}")
            return ", ".join(parts)
        return str(tm) if tm else ""

    @property
    def attacks_inputs(self) -> bool:
        """Whether any probe perturbs inputs (a privacy-only suite does not, and has no threat model to show)."""
        kinds = {str(p.get("kind")) for p in self.suite.get("probes", []) if isinstance(p, Mapping)}
        return not kinds or bool(kinds - {"clean", "retention", "mia-loss", "mia-confidence", "mia-lira", *SIZE_KINDS})

    def threat_model_eps(self) -> float | None:
        tm = self.suite.get("threat_model")
        return to_float(tm.get("eps")) if isinstance(tm, Mapping) else None

    def verdict_text(self) -> str:
        if self.stored_verdict is not None:
            return self.stored_verdict.word
        passed = self.passed
        if passed is None:
            return "UNDECIDED" if self.gates else "NO GATES"
        return "PASS" if passed else "FAIL"

    def verdict_detail(self) -> str:
        if self.stored_verdict is not None:
            return self.stored_verdict.detail
        return f"{self.gate_detail()} {LEGACY_VERDICT}"

    @property
    def verdict_reasons(self) -> tuple[str, ...]:
        """Why the run failed, one sentence each (empty for a pass, or an older report.json)."""
        return self.stored_verdict.reasons if self.stored_verdict is not None else ()

    @property
    def verdict_notes(self) -> tuple[str, ...]:
        """Warnings that did not fail the run (e.g. masking, when the suite opted out of failing on it)."""
        return self.stored_verdict.notes if self.stored_verdict is not None else ()

    def gate_detail(self) -> str:
        decided = [g for g in self.gates if g.passed is not None]
        failed = [g for g in decided if not g.passed]
        undecided = len(self.gates) - len(decided)
        tail = f" ({undecided} could not be decided)" if undecided and decided else ""
        if not self.gates:
            return "This suite defines no gates."
        if not decided:
            return f"{_count(len(self.gates), 'gate')}, none could be decided."
        if failed:
            return f"{len(failed)} of {_count(len(decided), 'gate')} failed{tail}."
        if undecided:
            return f"{_count(len(decided), 'gate')} passed, {undecided} could not be decided."
        if len(decided) == 1:
            return "The gate passed."
        return f"All {_count(len(decided), 'gate')} passed."

    def masking_warning(self, role: str) -> str:
        n = sum(1 for f in self.flags if f.is_masking and f.model == role)
        return (
            f"Robust accuracy of {role} is not to be trusted: gradient masking detected "
            f"({n} check{'s' if n != 1 else ''} flagged)."
        )

    # --- tables -------------------------------------------------------------------------------------------
    def comparison(self) -> tuple[list[str], list[ComparisonRow]]:
        """Rows of the teacher-vs-student table: every accuracy-like metric measured outside the special probes,
        keyed by (probe, label, metric, shared params); columns are the roles that have any of them."""
        groups: dict[tuple[str, str, str, str], ComparisonRow] = {}
        # An attack's balanced accuracy at telling members apart is no accuracy of the model.
        skip = SPECIAL_PROBES | set(self.mia_probes())
        for row in self.rows:
            if row.probe in skip or not row.metric.endswith("accuracy") or row.model == "?":
                continue
            shared = {k: v for k, v in row.params.items() if k not in ("source", "target", "model", "seed")}
            key = (row.probe, row.label, row.metric, json.dumps(shared, sort_keys=True, default=str))
            entry = groups.setdefault(key, ComparisonRow(row.probe, row.label, row.metric, shared, {}))
            entry.cells.setdefault(row.model, row)
        roles = order_roles(role for entry in groups.values() for role in entry.cells)
        ordered = sorted(groups.values(), key=lambda e: (e.probe != "clean", e.metric != "accuracy", e.probe))
        # Only mention eps when the same attack appears at several radii.
        per_label: dict[tuple[str, str], set[str]] = {}
        for entry in ordered:
            per_label.setdefault((entry.label, entry.metric), set()).add(
                json.dumps(entry.params, sort_keys=True, default=str)
            )
        for entry in ordered:
            entry.ambiguous = len(per_label[(entry.label, entry.metric)]) > 1
        return roles, ordered

    def transfer_rows(self) -> list[Row]:
        return [r for r in self.rows if r.probe == "transfer"]

    def curves(self) -> dict[tuple[str, str], list[Row]]:
        """(role, attack label) -> curve rows sorted by eps (robust accuracy only, rows without eps dropped)."""
        curves: dict[tuple[str, str], list[Row]] = {}
        for row in self.rows:
            if row.probe == "curve" and row.eps is not None and row.value is not None and "accuracy" in row.metric:
                curves.setdefault((row.model, row.label), []).append(row)
        ordered = sorted(curves.items(), key=lambda kv: role_sort_key(kv[0][0]))
        return {key: sorted(rows, key=lambda r: r.eps or 0.0) for key, rows in ordered}

    def bar_groups(self) -> list[tuple[str, dict[str, Row]]]:
        """Groups of the per-attack bar chart: clean accuracy, then robust accuracy per attack; role -> row."""
        _, entries = self.comparison()
        groups = []
        for entry in entries:
            if entry.probe == "clean" or entry.metric == "robust_accuracy":
                cells = {role: row for role, row in entry.cells.items() if row.value is not None}
                if cells:
                    groups.append((entry.short_title(), cells))
        return groups

    # --- membership inference ---------------------------------------------------------------------------------
    def mia_probes(self) -> dict[str, str]:
        """Membership-inference probes that have rows: name -> kind, in suite order. The kind is read from the
        suite's probe list; a row's params "attack" (also the kind) stands in where a report.json lacks the suite."""
        kinds: dict[str, str] = {}
        probes = self.suite.get("probes")
        for probe in probes if isinstance(probes, list) else []:
            if isinstance(probe, Mapping) and probe.get("kind") in MIA_KINDS:
                kinds[str(probe.get("name") or probe["kind"])] = str(probe["kind"])
        found: dict[str, str] = {}
        for row in self.rows:
            attack = row.params.get("attack")
            kind = kinds.get(row.probe) or (str(attack) if attack in MIA_KINDS else None)
            if kind is not None:
                found.setdefault(row.probe, kind)
        order = [name for name in kinds if name in found] + [name for name in found if name not in kinds]
        return {name: found[name] for name in order}

    def privacy(self) -> tuple[list[str], list[PrivacyRow]]:
        """Rows of the privacy table, one per (probe, view), own members first; columns are the roles."""
        probes = self.mia_probes()
        entries: dict[tuple[str, str], PrivacyRow] = {}
        for row in self.rows:
            if row.probe not in probes or row.model == "?":
                continue
            view, metric = "own", row.metric
            if metric.startswith(TEACHER_MEMBERS):
                view, metric = "teacher", metric[len(TEACHER_MEMBERS) :]
            if metric not in MIA_METRICS:
                continue  # still listed under all results
            entry = entries.setdefault((row.probe, view), PrivacyRow(row.probe, probes[row.probe], view, {}))
            entry.cells.setdefault(row.model, {}).setdefault(metric, row)
        ordered = sorted(entries.values(), key=lambda e: (list(probes).index(e.probe), e.view != "own"))
        return order_roles(role for entry in ordered for role in entry.cells), ordered


    # --- accuracy and robustness against size ---------------------------------------------------------------
    def size_probes(self) -> list[str]:
        """Size probes that have rows, in suite order; a probe named "size" counts where report.json lacks the
        suite's probe list."""
        probes = self.suite.get("probes")
        names = [
            str(p.get("name") or p["kind"])
            for p in (probes if isinstance(probes, list) else [])
            if isinstance(p, Mapping) and p.get("kind") in SIZE_KINDS
        ]
        if not isinstance(probes, list):
            names = list(SIZE_KINDS)
        found = {row.probe for row in self.rows if row.metric in COUNT_METRICS}
        return [name for name in dict.fromkeys(names) if name in found]

    def size(self) -> Size | None:
        """The size section: every model with a parameter count, smallest first, with its clean accuracy, robust
        accuracy per attack. None with fewer than
        two sized models."""
        probes = self.size_probes()
        parameters: dict[str, Row] = {}
        macs: dict[str, Row] = {}
        for row in self.rows:
            if row.probe not in probes or row.value is None:
                continue
            if row.metric == "parameters":
                parameters.setdefault(row.model, row)
            elif row.metric == "macs":
                macs.setdefault(row.model, row)
        if len(parameters) < 2:
            return None
        models = [
            SizeModel(role, row, macs.get(role))
            for role, row in sorted(parameters.items(), key=lambda kv: (kv[1].value, role_sort_key(kv[0])))
        ]
        columns: list[SizeColumn] = []
        _, entries = self.comparison()
        for entry in entries:
            clean = entry.probe == "clean" and entry.metric == "accuracy"
            if not clean and entry.metric != "robust_accuracy":
                continue
            cells = {role: row for role, row in entry.cells.items() if role in parameters and row.value is not None}
            if cells:
                title = "clean" if clean else entry.short_title().replace("\n", " ")
                columns.append(SizeColumn(title, "clean" if clean else "attack", cells, entry.detail()))
        # The masking probe's "worst case" is the worst over ITS attacks only (AutoAttack can be lower), so it is not
        # shown here as a worst case: the per-attack columns, AutoAttack among them, are the numbers to read.
        shapes = {json.dumps(row.params.get("input_shape")) for row in macs.values() if row.params.get("input_shape")}
        shape = ""
        if len(shapes) == 1:
            dims = json.loads(next(iter(shapes)))
            if isinstance(dims, list):
                shape = " × ".join(str(d) for d in dims)
        return Size(models, columns, shape)


@dataclass
class SizeModel:
    role: str
    parameters: Row
    macs: Row | None


@dataclass
class SizeColumn:
    title: str  # "clean" or the attack's label
    kind: str  # "clean" or "attack"
    cells: dict[str, Row]  # role -> row
    detail: str = ""

    @property
    def robust(self) -> bool:
        return self.kind != "clean"


@dataclass
class Size:
    """The models by size (smallest first) and the accuracy columns shown against it."""

    models: list[SizeModel]
    columns: list[SizeColumn]
    input_shape: str  # "1 × 8 × 8" when every MACs row was counted for one shape, else ""

    def intro(self, threat_model: str = "") -> str:
        shape = f" of shape {self.input_shape}" if self.input_shape else ""
        robust = any(c.robust for c in self.columns)
        text = (
            "The models from smallest to largest: parameters, and multiply-accumulates (MACs) of the conv and linear "
            f"layers for one input{shape}"
        )
        if robust:
            text += "; robust accuracy under each attack" + (f" at {threat_model}" if threat_model else "")
        text += "."
        return text


@dataclass
class PrivacyRow:
    probe: str
    kind: str
    view: str  # a key of VIEWS
    cells: dict[str, dict[str, Row]]  # role -> metric (unprefixed) -> row

    def title(self) -> str:
        return self.probe if self.probe == self.kind else f"{self.probe} ({self.kind})"

    def sizes(self) -> str:
        """``members / non-members``; per role when the roles were attacked with sets of different sizes."""
        found: dict[str, str] = {}
        for role, metrics in self.cells.items():
            for row in metrics.values():
                members, others = to_float(row.params.get("n_members")), to_float(row.params.get("n_nonmembers"))
                if members is not None and others is not None:
                    found[role] = f"{int(members)} / {int(others)}"
                    break
        if len(set(found.values())) == 1:
            return next(iter(found.values()))
        return " · ".join(f"{role} {found[role]}" for role in order_roles(found)) or "—"


@dataclass
class ComparisonRow:
    probe: str
    label: str
    metric: str
    params: dict[str, Any]
    cells: dict[str, Row]
    ambiguous: bool = False

    def title(self) -> str:
        if self.probe == "clean" and self.metric == "accuracy":
            return "Clean accuracy"
        base = humanise(self.metric)
        if self.label != self.probe or self.probe not in ("clean", "attack"):
            base += f" · {self.label}"
        eps = to_float(self.params.get("eps"))
        if self.ambiguous and eps is not None:
            base += f" (ε = {eps:.3g})"
        return base

    def short_title(self) -> str:
        if self.probe == "clean" and self.metric == "accuracy":
            return "clean"
        title = self.label
        eps = to_float(self.params.get("eps"))
        if self.ambiguous and eps is not None:
            title += f"\nε={eps:.3g}"
        return title

    def detail(self) -> str:
        return fmt_params(self.params, skip=("attack", "name"))

    def retention(self) -> float | None:
        teacher, student = self.cells.get("teacher"), self.cells.get("student")
        if teacher is None or student is None or teacher.value in (None, 0) or student.value is None:
            return None
        return student.value / teacher.value


# --- examples.npz --------------------------------------------------------------------------------------------


@dataclass
class Examples:
    """artifacts/examples.npz: clean (K, C, H, W) in [0, 1], labels (K,), attack name, and per role r
    adv_<r>, pred_clean_<r>, pred_adv_<r>."""

    clean: np.ndarray
    labels: np.ndarray
    attack: str
    adv: dict[str, np.ndarray]
    pred_clean: dict[str, np.ndarray]
    pred_adv: dict[str, np.ndarray]
    classes: list[str] | None = None

    @property
    def roles(self) -> list[str]:
        return order_roles(self.adv)

    def class_name(self, index: Any) -> str:
        try:
            i = int(index)
        except (TypeError, ValueError):
            return str(index)
        if self.classes and 0 <= i < len(self.classes):
            return self.classes[i]
        return str(i)


def _as_nchw(array: np.ndarray) -> np.ndarray | None:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:  # (K, H, W): one channel
        array = array[:, None]
    if array.ndim != 4:
        return None
    if array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):  # channels last
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        return None
    return np.clip(np.nan_to_num(array), 0.0, 1.0)


def inside_run(path: Path, run_dir: Path) -> bool:
    """Whether ``path``, followed through any symbolic link, lies inside ``run_dir``: a report reads only its own
    run's files, never a link to a file elsewhere."""
    return path.resolve().is_relative_to(run_dir.resolve())


def load_examples(path: Path) -> tuple[Examples | None, str]:
    """(examples, "") or (None, why not): a missing or malformed file is a note in the report, not an error."""
    if not path.is_file():
        return None, "this run saved no examples (artifacts/examples.npz)"
    if not inside_run(path, path.parent.parent):
        return None, "artifacts/examples.npz leads outside the run directory: not read"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported, not raised
        log.warning("cannot read %s: %s", path, error)
        return None, f"artifacts/examples.npz could not be read ({type(error).__name__})"
    if "clean" not in arrays:
        return None, "artifacts/examples.npz has no 'clean' array"
    clean = _as_nchw(arrays["clean"])
    if clean is None or clean.shape[0] == 0:
        return None, f"artifacts/examples.npz: 'clean' has shape {arrays['clean'].shape}, expected (K, C, H, W)"
    k = clean.shape[0]
    labels = arrays.get("labels")
    labels = (
        np.asarray(labels).reshape(-1)[:k] if labels is not None and np.asarray(labels).size >= k else np.full(k, -1)
    )
    adv, pred_clean, pred_adv = {}, {}, {}
    for key, value in arrays.items():
        if not key.startswith("adv_"):
            continue
        role = key[len("adv_") :]
        array = _as_nchw(value)
        if array is None or array.shape != clean.shape:
            log.warning("examples.npz: %s has shape %s, clean %s; skipped", key, np.shape(value), clean.shape)
            continue
        adv[role] = array
        for store, prefix in ((pred_clean, "pred_clean_"), (pred_adv, "pred_adv_")):
            pred = arrays.get(prefix + role)
            if pred is not None and np.asarray(pred).size >= k:
                store[role] = np.asarray(pred).reshape(-1)[:k]
    attack = arrays.get("attack")
    attack_name = str(attack.reshape(-1)[0]) if attack is not None and np.asarray(attack).size else "attack"
    classes = arrays.get("classes")
    class_names = [str(c) for c in np.asarray(classes).reshape(-1)] if classes is not None else None
    return Examples(clean, labels, attack_name, adv, pred_clean, pred_adv, class_names), ""


# --- artifacts/roc-<probe>-<role>.npz --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RocCurve:
    role: str
    view: str  # a key of VIEWS
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float | None  # from report.json, so the legend and the table agree


@dataclass
class Privacy:
    """Everything the privacy section shows: the table, and per probe its ROC curves and notes on missing ones."""

    roles: list[str]
    rows: list[PrivacyRow]
    curves: dict[str, list[RocCurve]]
    notes: dict[str, list[str]]

    @property
    def probes(self) -> list[str]:
        return list(dict.fromkeys(row.probe for row in self.rows))

    def footnote(self, row: Row) -> int | None:
        """The 1-based number of an unresolvable row's note among :meth:`footnotes`."""
        notes = self.footnotes()
        return notes.index(row.note) + 1 if row.unresolvable and row.note in notes else None

    def footnotes(self) -> list[str]:
        """The distinct notes of the unresolvable cells, numbered by position (1-based) in the tables."""
        notes = [
            row.note
            for entry in self.rows
            for metrics in entry.cells.values()
            for row in metrics.values()
            if row.unresolvable and row.note
        ]
        return list(dict.fromkeys(notes))


def _curve(arrays: Mapping[str, np.ndarray], view: str) -> tuple[np.ndarray, np.ndarray] | None:
    fpr, tpr = arrays.get(f"fpr_{view}"), arrays.get(f"tpr_{view}")
    if fpr is None or tpr is None:
        return None
    fpr, tpr = np.asarray(fpr, dtype=float).reshape(-1), np.asarray(tpr, dtype=float).reshape(-1)
    keep = np.isfinite(fpr) & np.isfinite(tpr) if fpr.shape == tpr.shape else np.zeros(0, dtype=bool)
    if keep.sum() < 2:
        return None
    order = np.lexsort((tpr[keep], fpr[keep]))
    return np.clip(fpr[keep][order], 0.0, 1.0), np.clip(tpr[keep][order], 0.0, 1.0)


def load_privacy(report: Report, run_dir: Path) -> Privacy | None:
    """The privacy section's content, or None when the run has no membership-inference rows. A missing or
    unreadable ROC file costs its lines (with a note), never the report."""
    roles, rows = report.privacy()
    if not rows:
        return None
    curves: dict[str, list[RocCurve]] = {}
    notes: dict[str, list[str]] = {}
    for probe in dict.fromkeys(row.probe for row in rows):
        views = {(role, row.view): row.cells[role] for row in rows if row.probe == probe for role in row.cells}
        curves[probe], notes[probe] = [], []
        for role in order_roles(role for role, _ in views):
            name = f"artifacts/roc-{probe}-{role}.npz"
            path = run_dir / name
            if not path.is_file():
                notes[probe].append(f"no ROC curve for {role}: {name} is missing")
                continue
            if not inside_run(path, run_dir):
                notes[probe].append(f"no ROC curve for {role}: {name} leads outside the run directory: not read")
                continue
            try:
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {key: npz[key] for key in npz.files}
            except Exception as error:  # noqa: BLE001 - any unreadable file is a note, not an error
                log.warning("cannot read %s: %s", path, error)
                notes[probe].append(f"no ROC curve for {role}: {name} could not be read ({type(error).__name__})")
                continue
            for view in VIEWS:
                if (role, view) not in views:
                    continue
                curve = _curve(arrays, view)
                if curve is None:
                    notes[probe].append(f"no ROC curve for {role} ({VIEWS[view]}): {name} has no usable "
                                        f"fpr_{view} / tpr_{view} arrays")
                    continue
                auc = views[(role, view)].get("auc")
                curves[probe].append(RocCurve(role, view, *curve, auc.value if auc is not None else None))
    return Privacy(roles, rows, curves, notes)
