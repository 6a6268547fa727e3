"""The rows, gates, verdict and flags of report.json as tolerant value objects (:class:`Row`, :class:`Gate`,
:class:`Verdict`, :class:`Flag`), and the formatting every renderer shares: numbers, percentages, confidence
intervals, parameters and metric names (``fmt_*``, :func:`humanise`), and the teacher-first order of roles.
:class:`robustdistill.reports.data.Report` builds on these; nothing here reads files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Probes whose rows go in their own section rather than the teacher-vs-student table.
SPECIAL_PROBES = frozenset({"curve", "transfer", "retention", "agreement", "masking"})
#: Metric name parts that mean "a fraction in [0, 1]", shown as a percentage.
FRACTION_WORDS = ("accuracy", "rate", "agreement", "retention", "fraction", "precision", "recall", "coverage", "tpr",
                  "asr")  # attack success rates (asr, transfer_asr, alo_asr)
ROLE_ORDER = ("teacher", "student")

NOT_RESOLVABLE = "not resolvable"
#: Metrics that count things (shown as whole numbers with thousands separators).
COUNT_METRICS = frozenset({"parameters", "macs"})
#: Metrics printed as whole numbers: the counts, and the masking probe's number of checks that flagged.
WHOLE_NUMBERS = COUNT_METRICS | {"checks_failed"}


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
    if metric.rsplit(".", 1)[-1].lower() in WHOLE_NUMBERS and number.is_integer():
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


def fmt_bound(value: float, metric: str = "") -> str:
    """One end of an interval, in the unit of its value but without the "%": ``85.0``; the ends of the scale exactly
    (0 and 100%) as ``0`` and ``100``, which read as "cannot go further" rather than as a rounded number."""
    if is_fraction(metric):
        percent = value * 100
        return f"{percent:.0f}" if percent in (0.0, 100.0) else f"{percent:.1f}"
    return fmt_value(value, metric)


def fmt_interval(ci95: tuple[float, float] | None, metric: str = "") -> str:
    """``[85.0, 100]``: the 95% interval itself (Wilson intervals are asymmetric: "± half-width" would misstate
    them), or "—" without one."""
    if ci95 is None:
        return "—"
    return f"[{fmt_bound(ci95[0], metric)}, {fmt_bound(ci95[1], metric)}]"


def fmt_ci(value: Any, ci95: tuple[float, float] | None, metric: str = "") -> str:
    """The one way every report prints a value with its 95% interval: ``100.0% [85.0, 100]`` or
    ``0.842 [0.811, 0.873]``; just the value without an interval."""
    number = to_float(value)
    if number is None or ci95 is None:
        return fmt_value(value, metric)
    return f"{fmt_value(number, metric)} {fmt_interval(ci95, metric)}"


def fmt_row(row: Row) -> str:
    """:func:`fmt_value`, except that a TPR the probe could not resolve reads "not resolvable": a blank or 0 there
    would read as "the attack found nothing" when the run simply had too few non-members to measure it."""
    return NOT_RESOLVABLE if row.unresolvable else fmt_value(row.value, row.metric)


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


def shared_params(rows: Iterable[Row], skip: Iterable[str] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The params every row has with the same value (printed once above a table), and each row's other params
    (printed on its row); with a single row nothing is "shared"."""
    rows = list(rows)
    skipped = set(skip)
    params = [{k: v for k, v in row.params.items() if k not in skipped} for row in rows]
    if len(params) < 2:
        return {}, params

    def same(key: str) -> bool:
        first = json.dumps(params[0][key], sort_keys=True, default=str)
        return all(key in p and json.dumps(p[key], sort_keys=True, default=str) == first for p in params[1:])

    shared = {key: value for key, value in params[0].items() if same(key)}
    return shared, [{k: v for k, v in p.items() if k not in shared} for p in params]


#: Hex digests longer than this are shortened in the manifest (the full one stays in report.json).
DIGEST_CHARS = 12


def fmt_fact(value: Any, shorten: bool = True) -> str:
    """A manifest value for people: a mapping as ``kind: digits · split: test · n: 50``, lists comma-separated, a
    long hex digest shortened to its first 12 characters (unless ``shorten`` is False); never raw JSON."""
    if isinstance(value, Mapping):
        return " · ".join(f"{k}: {fmt_fact(v, shorten)}" for k, v in value.items()) or "—"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_fact(v, shorten) for v in value) or "—"
    if value is None:
        return "—"
    text = str(value)
    if shorten and len(text) > 2 * DIGEST_CHARS and all(c in "0123456789abcdef" for c in text.lower()):
        return text[:DIGEST_CHARS] + "…"
    return fmt_param(value)


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
    note: str = ""  # the runner's reason for a status other than passed/failed

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
        note = raw.get("note") if isinstance(raw.get("note"), str) else ""
        return cls(str(raw.get("metric") or "?"), op, raw.get("threshold"), raw.get("value"), passed, status, note)


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
