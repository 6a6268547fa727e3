"""The probe base, the same for every model family: the evaluation context a unit runs in (:class:`EvalContext`; a
family's context adds its data), what a unit returns (:class:`UnitResult`), report rows (:func:`accuracy_row`,
:func:`value_row`), the :class:`Probe` base class with its config (:class:`ProbeConfig`), and the ``PROBES`` registry
with :func:`build_probe`, which turns one ``[[probes]]`` table into a probe. Nothing here knows what an image is: the
image family's helpers (attacks on (x, y), the threat model's attack specs) are in ``probes/image/context.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydantic
from pydantic import ConfigDict, ValidationError

from robustdistill.audits.schema import PROBE_NAME_PATTERN, ThreatModel, user_error
from robustdistill.errors import UserInputError
from robustdistill.registry import Registry
from robustdistill.stats import proportion_row

log = logging.getLogger(__name__)

PROBES: Registry[type["Probe"]] = Registry("probe")


# --------------------------------------------------------------------------------------------------------------
# What a unit sees and returns


@dataclass(kw_only=True)
class EvalContext:
    """What a unit sees, whatever the model family: the models by role, the run settings, where artifacts go, and
    which models gave non-finite outputs. A family's context (e.g. ``ImageContext``) adds its evaluation data."""

    models: dict[str, Any]
    seed: int
    batch_size: int
    artifacts: Path | None = None
    non_finite: dict[str, str] = field(default_factory=dict)  # role -> where its outputs were first NaN or infinite
    # role -> sha256 of the model (the runner fills it in): what a unit may key a cache it keeps in artifacts/ by.
    model_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """The number of evaluation points a unit's masks cover."""
        raise NotImplementedError

    def check_outputs(self, role: str) -> None:
        """Make sure ``role``'s outputs on the evaluation data were checked for NaN/infinite values once this run
        (families whose probes may not look at every model's outputs override it)."""

    def note_non_finite(self, role: str, evidence: str) -> None:
        self.non_finite.setdefault(role, evidence)

    def output_flags(self, roles: tuple[str, ...]) -> list[dict[str, Any]]:
        """A ``non_finite_outputs`` flag for each of ``roles`` seen with NaN or infinite outputs in this run."""
        return [non_finite_flag(role, self.non_finite[role]) for role in roles if role in self.non_finite]


@dataclass
class UnitResult:
    rows: list[dict[str, Any]]
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # role -> name -> per-point bools
    flags: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)  # files written under the run's artifacts/


NON_FINITE = "non_finite_outputs"


def non_finite_flag(role: str, evidence: str) -> dict[str, Any]:
    """The flag of a model whose outputs are NaN or infinite: every gate on it is invalid and the verdict fails."""
    return {"kind": NON_FINITE, "model": role, "check": NON_FINITE, "evidence": evidence}


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------------------------
# Rows


def accuracy_row(probe: str, model: str, metric: str, mask: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    value, ci, n = proportion_row(mask)
    return {"probe": probe, "model": model, "metric": metric, "value": value, "ci95": ci, "n": n, "params": params}


def value_row(probe: str, model: str, metric: str, value: float | None, n: int, params: dict[str, Any],
              ci95: list[float] | None = None) -> dict[str, Any]:
    if value is not None and not math.isfinite(value):
        value = None
    return {"probe": probe, "model": model, "metric": metric, "value": value, "ci95": ci95, "n": n, "params": params}


# --------------------------------------------------------------------------------------------------------------
# Probe base


class ProbeConfig(pydantic.BaseModel):
    """Keys every probe takes: ``kind`` and an optional ``name`` (how rows and gates refer to it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    name: str | None = None
    # The roles this probe audits (e.g. only the class-conditional models of a suite that also holds text-to-image
    # ones); None: every model of the suite.
    models: list[str] | None = pydantic.Field(None, min_length=1)


class Probe:
    """Base class. Subclasses set ``kind``, ``config_class``, ``metrics`` and implement :meth:`run`.

    ``metrics`` lists every metric the kind can emit; :meth:`produces` narrows it to what this configured probe
    emits for one model (e.g. ``median_l2`` only for L2 attacks). Gates are checked against it when the suite is
    loaded, and a contract test holds every registered probe's rows to it.
    """

    kind: ClassVar[str] = ""
    family: ClassVar[str] = ""  # the model family it applies to (robustdistill.audits.families): "classifier", ...
    group: ClassVar[str] = ""   # the report section that shows its rows: "image-attacks", "privacy", ...
    config_class: ClassVar[type[ProbeConfig]] = ProbeConfig
    metrics: ClassVar[tuple[str, ...]] = ()
    pair: ClassVar[bool] = False       # runs on (teacher, other model) pairs
    derived: ClassVar[bool] = False    # computed from other probes' results, runs nothing
    multi_row: ClassVar[bool] = False  # several rows per (model, metric): not gateable
    retainable: ClassVar[bool] = False
    needs_threat_model: ClassVar[bool] = True  # attacks inputs within the suite's threat model
    required_masks: ClassVar[tuple[str, ...]] = ()  # per-point masks of each model that its family's report reads

    def __init__(self, config: ProbeConfig, threat_model: ThreatModel, seed: int, where: str) -> None:
        self.config = config
        self.threat_model = threat_model
        self.seed = seed
        self.where = where
        self.name = config.name or self.default_name()
        if not PROBE_NAME_PATTERN.match(self.name):
            raise UserInputError(f"{where}.name", f"{self.name!r} is not a usable probe name",
                                 "use lowercase letters, digits, '-' and '_' (no dots)")
        self.validate()

    def default_name(self) -> str:
        return self.kind

    def validate(self) -> None:
        """Check everything that can be checked before models are loaded; raise UserInputError naming the field."""

    def spec(self) -> dict[str, Any]:
        """The resolved probe table (name filled in)."""
        return {**self.config.model_dump(mode="json", exclude_none=True), "name": self.name}

    def params(self) -> dict[str, Any]:
        """JSON params identifying what the probe computes (part of every unit's key)."""
        return {}

    def produces(self, role: str) -> tuple[str, ...]:
        """Every metric this probe, as configured, can emit in a row of model ``role``."""
        return self.metrics

    def gate_metrics(self, role: str) -> tuple[str, ...]:
        """The metrics of :meth:`produces` with one row per model (a gate needs a single value)."""
        return () if self.multi_row else self.produces(role)

    @classmethod
    def mask_problem(cls, name: str) -> str | None:
        """What is wrong with a stored mask's name (the run store refuses a unit edited to hold it), or None."""
        return None

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        """Whether ``metric`` claims robustness to attack, so that a gradient-masking flag on a model whose
        gradients made its adversarial examples leaves a gate on it untrusted."""
        return False

    def expected_cost(self) -> float:
        """Expected work of one unit, in gradient steps over the evaluation points (a forward pass is about a
        third): the audit's progress bar weighs units by it, so its ETA is right when one unit takes a minute and
        another a tenth of a second. The default: about one pass over the points."""
        return 1.0

    def audited(self, roles: list[str]) -> list[str]:
        """The roles of ``roles`` this probe audits: its ``models``, in suite order, or all of them."""
        wanted = self.config.models
        return list(roles) if wanted is None else [role for role in roles if role in wanted]

    def check_roles(self, roles: list[str]) -> None:
        """Refuse ``models`` naming a role the suite does not have (before anything is loaded)."""
        unknown = [role for role in self.config.models or [] if role not in roles]
        if unknown:
            raise UserInputError(f"{self.where}.models", f"{unknown[0]!r} is not a model of the suite",
                                 f"use roles of its [pipeline]: {', '.join(roles)}")
        if self.pair and self.config.models is not None and "teacher" not in self.config.models:
            raise UserInputError(f"{self.where}.models", "a pair probe compares models with the teacher",
                                 "include \"teacher\" in models")

    def units(self, roles: list[str]) -> list[tuple[str, ...]]:
        if self.derived:
            return []
        roles = self.audited(roles)
        if self.pair:
            return [("teacher", role) for role in roles if role != "teacher"]
        return [(role,) for role in roles]

    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        """Check what depends on the loaded models (e.g. recorded training members) before anything is written;
        raise UserInputError naming the field."""

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        """Check what depends on the models AND the family's evaluation data (e.g. that a teacher's recorded
        training members are the data's examples) before anything is written; raise UserInputError."""

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        raise NotImplementedError

    def run_unit(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        """:meth:`run`, plus a ``non_finite_outputs`` flag for each model of the unit whose logits were NaN or
        infinite, on the clean evaluation data or under an attack. The clean pass is cached for the run, so making
        sure every model of every unit had one costs one forward pass per model, whatever the probe."""
        result = self.run(ctx, roles)
        for role in roles:
            ctx.check_outputs(role)
        result.flags.extend(ctx.output_flags(roles))
        return result

    def row_params(self, **extra: Any) -> dict[str, Any]:
        params = dict(self.params())
        if self.config.name:
            params["name"] = self.name
        return {**params, **extra}


def build_probe(table: Mapping[str, Any], where: str, threat_model: ThreatModel, seed: int) -> Probe:
    kind = table.get("kind")
    if kind is None:
        raise UserInputError(f"{where}.kind", "is required", f"choose one of {', '.join(PROBES.available())}")
    if not isinstance(kind, str) or kind not in PROBES:
        try:
            PROBES.get(str(kind))
        except UserInputError as exc:
            raise UserInputError(f"{where}.kind", exc.problem.replace("probe probe", "probe"), exc.fix) from None
    probe_class = PROBES.get(kind)
    try:
        config = probe_class.config_class.model_validate(dict(table))
    except ValidationError as exc:
        raise user_error(exc, where, probe_class.config_class) from None
    return probe_class(config, threat_model, seed, where)
