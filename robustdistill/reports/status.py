"""What a reader must know before taking a number at face value, decided once for every renderer: a gate's status
(:func:`gate_status`: PASS/FAIL plus UNTRUSTED, INVALID or MISSING and why) and whether an attack ran with less
effort than its standard version (:func:`reduced_attack`: the demo's AutoAttack with Square at 1000 queries).

report.html, report.md, index.html and the plots all print these through the functions here, so a status or a
"reduced" label cannot be shown in one table and forgotten in another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from robustdistill.reports.records import Gate, fmt_value, to_float

#: Why a gate's value is not to be taken at face value, when the runner gave no note of its own.
GATE_REASONS = {
    "untrusted": "gradient masking detected on a model whose gradients made the adversarial examples",
    "invalid": "a model behind this value gave NaN or infinite outputs",
    "missing": "no value: not measured, or undefined",
}


@dataclass(frozen=True)
class GateStatus:
    """``result``: "pass", "fail" or "undecided"; ``warning``: "untrusted", "invalid", "missing" or None;
    ``reason``: why the warning (empty without one)."""

    result: str
    warning: str | None
    reason: str


#: Why a value of a model flagged for gradient masking (with no gate on it) is marked.
MASKED_NOTE = ("gradient masking detected on {role}: attacks following its gradients under-report its vulnerability, "
               "so this value overstates its robustness")


class Notes:
    """Reasons printed once under a table and referred to by number from its cells (a gate's UNTRUSTED reason, why
    a value is not to be trusted): the reason is on the page, not in a tooltip, and a long one does not widen the
    table. report.html and report.md subclass it with their own marks."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def number(self, text: str) -> int:
        """The 1-based number of ``text``, numbered in order of first use."""
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


def gate_status(gate: Gate, masked_roles: Iterable[str]) -> GateStatus:
    result = {True: "pass", False: "fail", None: "undecided"}[gate.passed]
    warning = gate.warning(masked_roles)
    reason = (gate.note or GATE_REASONS[warning]) if warning else ""
    return GateStatus(result, warning, reason)


def gate_key(role: str, probe: str, metric: str) -> str:
    """The gate metric naming one value: ``student.pgd.robust_accuracy`` (audits/schema.py, gates)."""
    return f"{role}.{probe}.{metric}"


def retention_key(probe: str) -> str:
    """The gate metric naming the student's retention of the teacher's value under a probe."""
    return f"retention.{probe}"


def gate_probe(metric: str) -> str:
    """The probe a gate metric names: ``student.pgd.robust_accuracy`` and ``retention.pgd`` -> ``pgd``."""
    parts = metric.split(".")
    return parts[1] if len(parts) > 1 else ""


def gate_unit(metric: str) -> str:
    """The metric name that formats a gate's threshold and value: a retention gate is a share (a percentage)."""
    return "retention" if metric.startswith("retention.") else metric


@dataclass(frozen=True)
class GateView:
    """One line of a gates table, as every renderer prints it: the threshold and value formatted, the status, and
    ``reduced``: why the attack behind the gate ran reduced ("" at full strength)."""

    metric: str
    op: str
    threshold: str
    value: str
    status: GateStatus
    reduced: str


def gate_views(gates: Iterable[Gate], masked_roles: Iterable[str], reduced: Mapping[str, str]) -> list[GateView]:
    masked = set(masked_roles)
    views = []
    for gate in gates:
        unit = gate_unit(gate.metric)
        views.append(GateView(gate.metric, gate.op, fmt_value(gate.threshold, unit), fmt_value(gate.value, unit),
                              gate_status(gate, masked), reduced.get(gate_probe(gate.metric), "")))
    return views


def reduced_gate_notes(views: Iterable[GateView]) -> list[str]:
    """The explanation of each reduced attack a gate is on, once each."""
    found = {gate_probe(v.metric): v.reduced for v in views if v.reduced}
    return [reduced_note(probe, why) for probe, why in found.items()]


def gates_by_metric(gates: Iterable[Gate]) -> dict[str, Gate]:
    found: dict[str, Gate] = {}
    for gate in gates:
        found.setdefault(gate.metric, gate)
    return found


# --- reduced attacks ----------------------------------------------------------------------------------------------

#: The official standard AutoAttack (Croce & Hein 2020; fra31/auto-attack, ``version='standard'``), as the defaults of
#: robustdistill/attacks/autoattack.py (AutoAttack.__init__) record them. Copied, not imported: reports never import
#: attacks. A row's params hold the settings it ran with; any below these make its number a reduced AutoAttack.
AUTOATTACK_STANDARD = {"steps": 100, "n_queries": 5000, "n_target_classes": 9}
AUTOATTACK_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: What each setting is called in the explanation.
AUTOATTACK_SETTINGS = {"n_queries": "Square queries", "steps": "iterations", "n_target_classes": "target classes"}
REDUCED = "reduced"


def reduced_attack(params: Mapping[str, Any]) -> str:
    """Why an attack row's number is weaker than the attack's standard version ("Square queries 1000 (official
    5000)"), or "" when it ran at full strength or is not an attack with a standard version."""
    if params.get("attack") != "autoattack":
        return ""
    parts = []
    for key, official in AUTOATTACK_STANDARD.items():
        value = to_float(params.get(key))
        if value is not None and value < official:
            parts.append(f"{AUTOATTACK_SETTINGS[key]} {value:g} (official {official})")
    components = params.get("attacks")
    if isinstance(components, list | tuple) and set(AUTOATTACK_COMPONENTS) - set(map(str, components)):
        parts.append(f"components {', '.join(map(str, components))} (official: all four)")
    return ", ".join(parts)


def reduced_labels(rows: Iterable[Any]) -> dict[str, str]:
    """Attack label -> why it is reduced, over report rows (anything with ``label`` and ``params``), for every
    label that ran reduced; rows that only name the attack (retention, transfer) are labelled through this map."""
    found: dict[str, str] = {}
    for row in rows:
        why = reduced_attack(row.params)
        if why:
            found.setdefault(row.label, why)
            found.setdefault(str(row.probe), why)
    return found


def reduced_note(label: str, why: str) -> str:
    """The one-line explanation printed next to a reduced attack's numbers."""
    return (f"{label} ({REDUCED}): {why}. A reduced AutoAttack is weaker than the standard one, so its robust "
            "accuracy can overstate robustness: a preview, not an AutoAttack result.")


def with_reduced(label: str, reduced: Mapping[str, str]) -> str:
    """``autoattack (reduced)`` for a reduced attack's label, the label itself otherwise."""
    return f"{label} ({REDUCED})" if label in reduced else label


__all__ = [
    "AUTOATTACK_STANDARD",
    "GATE_REASONS",
    "GateStatus",
    "GateView",
    "MASKED_NOTE",
    "Notes",
    "gate_key",
    "gate_probe",
    "gate_unit",
    "gate_views",
    "gate_status",
    "gates_by_metric",
    "reduced_attack",
    "reduced_gate_notes",
    "reduced_labels",
    "reduced_note",
    "retention_key",
    "with_reduced",
]
