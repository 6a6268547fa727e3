"""Gates: ``[gates]`` of a suite, ``"<role>.<probe>.<metric>" = { min = 0.5 }`` or ``"retention.<probe>" = { min =
0.8 }``, parsed into :class:`Gate` objects and checked against what each probe can produce, before anything runs."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from robustdistill.errors import UserInputError


class GateSpec(BaseModel):
    """``{ min = 0.5 }``, ``{ max = 0.1 }`` or both."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Gate:
    """One bound on one metric: ``metric`` is ``<role>.<probe>.<metric>`` or ``retention.<probe>``."""

    metric: str
    op: Literal[">=", "<="]
    threshold: float
    role: str
    probe: str
    measure: str  # the row's metric name, or the probe name a retention gate refers to

    @property
    def is_retention(self) -> bool:
        return self.probe == "retention"


def _describe(probe: Any) -> str:
    """The probe's kind, with the attack and norm of an attack probe (why median_l2 is missing from an L-inf one)."""
    if probe.kind == "attack":
        return f"{probe.attack}, {probe.norm.upper().replace('LINF', 'L-inf')}"
    return probe.kind


def parse_gates(raw: Mapping[str, Any], suite_roles: list[str], probes: list[Any]) -> tuple[list[Gate], dict[str, dict[str, float]]]:
    """The suite's ``[gates]`` as :class:`Gate` objects (a min and a max give two), checked against what each probe
    can produce for each model, and the cleaned table for the resolved suite."""
    from robustdistill.audits.schema import user_error  # the schema imports this module

    by_name = {probe.name: probe for probe in probes}
    gates: list[Gate] = []
    cleaned: dict[str, dict[str, float]] = {}
    syntax = 'write "<role>.<probe>.<metric>" = { min = 0.5 } or "retention.<probe>" = { min = 0.8 }'
    for key, spec in raw.items():
        where = f"gates.{key!r}" if "." in key else f"gates.{key}"
        if not isinstance(spec, Mapping):
            raise UserInputError(where, f"must be a table with min and/or max, got {spec!r}", syntax)
        try:
            bounds = GateSpec.model_validate(dict(spec))
        except ValidationError as exc:
            raise user_error(exc, where, GateSpec) from None
        if bounds.min is None and bounds.max is None:
            raise UserInputError(where, "has neither min nor max", syntax)
        for label, bound in (("min", bounds.min), ("max", bounds.max)):
            if bound is not None and not math.isfinite(bound):
                raise UserInputError(f"{where}.{label}", f"must be a finite number, got {bound}", "e.g. 0.5")
        parts = key.split(".")
        if len(parts) == 2 and parts[0] == "retention":
            role, probe_name, measure = "student", "retention", parts[1]
        elif len(parts) == 3:
            role, probe_name, measure = parts
        else:
            raise UserInputError(where, "is not a metric path", syntax)
        if role not in suite_roles:
            raise UserInputError(where, f"unknown model {role!r}", f"use one of {', '.join(suite_roles)}")
        if probe_name == "retention":
            if role == "teacher":
                raise UserInputError(where, "retention is student / teacher; the teacher has none", "gate a student's retention")
            target = by_name.get(measure)
            if target is None or not target.retainable:
                options = [p.name for p in probes if p.retainable]
                raise UserInputError(where, f"no clean or attack probe named {measure!r} to take the retention of",
                                     f"use one of {', '.join(options) or '(none: add an attack probe)'}")
        else:
            target = by_name.get(probe_name)
            if target is None:
                close = difflib.get_close_matches(probe_name, list(by_name), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserInputError(where, f"no probe named {probe_name!r} in the suite",
                                     f"{hint}probes: {', '.join(by_name)}")
            if role not in target.audited(suite_roles):
                raise UserInputError(where, f"probe {probe_name!r} does not audit {role} (its models: "
                                     f"{', '.join(target.audited(suite_roles))})", f"add {role!r} to its models")
            metrics = target.gate_metrics(role)
            if measure not in metrics:
                # Refused now, not reported "missing" after the run: this probe can never give that row.
                if measure in target.produces(role):
                    problem = f"probe {probe_name!r} gives several {measure!r} rows per model, so it cannot be gated"
                else:
                    problem = f"probe {probe_name!r} ({_describe(target)}) never produces {measure!r} for {role}"
                close = difflib.get_close_matches(measure, list(metrics), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserInputError(where, problem, f"{hint}gateable metrics of {probe_name!r} for {role}: "
                                     f"{', '.join(metrics) or '(none)'}")
            if target.pair and role == "teacher" and len(suite_roles) > 2:
                raise UserInputError(where, "the teacher has one such row per other model", "gate the other model instead")
        cleaned[key] = {k: v for k, v in (("min", bounds.min), ("max", bounds.max)) if v is not None}
        if bounds.min is not None:
            gates.append(Gate(key, ">=", float(bounds.min), role, probe_name, measure))
        if bounds.max is not None:
            gates.append(Gate(key, "<=", float(bounds.max), role, probe_name, measure))
    return gates, cleaned
