"""The probe base: the evaluation context a unit runs in (:class:`EvalContext`), what a unit returns
(:class:`UnitResult`), running models and attacks on the evaluation set with non-finite-output checks, resolving an
attack name and its parameters against the suite's threat model (:class:`AttackSpec`), report rows
(:func:`accuracy_row`, :func:`value_row`), the :class:`Probe` base class with its config (:class:`ProbeConfig`), and
the ``PROBES`` registry with :func:`build_probe`, which turns one ``[[probes]]`` table into a probe.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydantic
import torch
from pydantic import ConfigDict, ValidationError
from torch import nn

from robustdistill import attacks
from robustdistill.audits.schema import PROBE_NAME_PATTERN, ThreatModel, user_error
from robustdistill.errors import UserInputError
from robustdistill.registry import Registry
from robustdistill.stats import proportion_row
from robustdistill.utils import model_device

log = logging.getLogger(__name__)

PROBES: Registry[type["Probe"]] = Registry("probe")


# --------------------------------------------------------------------------------------------------------------
# Running models and attacks on an evaluation set


@dataclass
class EvalContext:
    """What a unit sees: the evaluation points (CPU, [0, 1]), the models by role, and run settings."""

    x: torch.Tensor
    y: torch.Tensor
    models: dict[str, nn.Module]
    seed: int
    batch_size: int
    artifacts: Path | None = None
    example_idx: np.ndarray | None = None
    examples_probe: str | None = None
    _clean_pred: dict[str, torch.Tensor] = field(default_factory=dict)
    non_finite: dict[str, str] = field(default_factory=dict)  # role -> where its logits were first NaN or infinite

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def clean_pred(self, role: str) -> torch.Tensor:
        if role not in self._clean_pred:
            self._clean_pred[role] = self.predict(role, self.x, "clean evaluation inputs")
        return self._clean_pred[role]

    def predict(self, role: str, x: torch.Tensor, inputs: str) -> torch.Tensor:
        """The role's top-1 predictions on ``x``, noting ``inputs`` (what x is) when any logit is NaN or infinite:
        the argmax of such a row is arbitrary (NaN counts as the largest), so every number built on it is void."""
        pred, bad = predict_checked(self.models[role], x, self.batch_size)
        if bad and role not in self.non_finite:
            if not bool(torch.isfinite(x).all()):  # an attack's fault rather than the model's: say so
                inputs += " (the inputs themselves hold NaN or infinite values)"
            self.non_finite[role] = f"NaN or infinite logits on {bad} of {len(x)} {inputs}"
        return pred

    def output_flags(self, roles: tuple[str, ...]) -> list[dict[str, Any]]:
        """A ``non_finite_outputs`` flag for each of ``roles`` seen with NaN or infinite logits in this run."""
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


@torch.no_grad()
def predict_checked(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """(top-1 predictions, number of inputs with a NaN or infinite logit)."""
    device = model_device(model)
    out, bad = [], 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        bad += int((~torch.isfinite(logits)).flatten(1).any(1).sum())
        out.append(logits.argmax(1).cpu())
    return (torch.cat(out) if out else torch.empty(0, dtype=torch.long)), bad


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return predict_checked(model, x, batch_size)[0]


def run_attack(atk: attacks.Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """x_adv for every point, in batches, on the model's device; returned on the CPU."""
    device = model_device(model)
    pieces = []
    broken_by: list[str | None] = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        pieces.append(atk(model, xb, yb).detach().cpu())
        broken_by.extend(getattr(atk, "last_broken_by", None) or [])
    model.eval()
    if hasattr(atk, "last_broken_by"):
        atk.audit_broken_by = broken_by  # type: ignore[attr-defined]
    return torch.cat(pieces) if pieces else x.clone()


class ScaledLogits(nn.Module):
    """``model(x) * scale``: the logit-rescaling check (a CE attack whose success changes with the scale of the
    logits is fighting saturated softmax gradients, not robustness; Carlini & Wagner 2017, section VIII)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class AttackSpec:
    """An attack by registry name with its resolved constructor arguments (eps/norm from the threat model)."""

    attack: str
    kwargs: dict[str, Any]
    norm: str

    def build(self, **override: Any) -> attacks.Attack:
        return attacks.create(self.attack, **{**self.kwargs, **override})

    def describe(self, **override: Any) -> dict[str, Any]:
        """Row params: the attack's name and every constructor argument, defaults included."""
        factory = attacks.ATTACKS.get(self.attack)
        signature = inspect.signature(factory)
        values = {name: p.default for name, p in signature.parameters.items()
                  if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}
        values |= self.kwargs | override
        if values.get("alpha", 0) is None and "eps" in values and self.attack in ("pgd", "cw-linf"):
            values["alpha"] = values["eps"] / 4 if isinstance(values["eps"], (int, float)) else None
        values["norm"] = self.norm
        return json_safe({"attack": self.attack, **values})


def resolve_attack(name: str, params: Mapping[str, Any], threat_model: ThreatModel, seed: int, where: str) -> AttackSpec:
    """Build once to validate (errors name ``<where>.params...``), filling eps/norm/seed from the suite."""
    if name not in attacks.ATTACKS:
        try:
            attacks.ATTACKS.get(name)
        except UserInputError as exc:
            raise UserInputError(f"{where}.attack", exc.problem, exc.fix) from None
    signature = inspect.signature(attacks.ATTACKS.get(name))
    kwargs = dict(params)
    explicit_eps = "eps" in kwargs
    if "eps" in signature.parameters and not explicit_eps:
        kwargs["eps"] = threat_model.eps
    if "norm" in signature.parameters and "norm" not in kwargs:
        kwargs["norm"] = threat_model.norm
    if "seed" in signature.parameters:
        kwargs.setdefault("seed", seed)
    for key in kwargs:
        if key not in signature.parameters:
            known = ", ".join(p for p in signature.parameters if p != "self")
            raise UserInputError(f"{where}.params.{key}", f"{name} has no parameter {key!r}", f"its parameters: {known}")
    try:
        atk = attacks.create(name, **kwargs)
    except UserInputError as exc:
        field_name = exc.field if exc.field in signature.parameters else None
        target = f"{where}.params.{field_name}" if field_name else f"{where}.params"
        raise UserInputError(target, exc.problem, exc.fix) from None
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{where}.params", str(exc).splitlines()[0], "check the attack's parameters") from None
    if atk.norm != threat_model.norm and not explicit_eps:
        raise UserInputError(f"{where}.attack", f"{name} is an {atk.norm.upper()} attack but the threat model is "
                             f"{threat_model.norm.upper()}", f"set {where}.params.eps to evaluate it at its own radius "
                             "(eps = inf: minimum-norm), or choose an attack for the threat model")
    return AttackSpec(name, kwargs, atk.norm)


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


def attack_outcome(ctx: EvalContext, role: str, x_adv: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(clean correct, robust correct = clean correct and still correct under attack, adversarial predictions)."""
    clean = (ctx.clean_pred(role) == ctx.y).numpy()
    adv_pred = ctx.predict(role, x_adv, "adversarial inputs")
    robust = clean & (adv_pred == ctx.y).numpy()
    return clean, robust, adv_pred


# --------------------------------------------------------------------------------------------------------------
# Probe base


class ProbeConfig(pydantic.BaseModel):
    """Keys every probe takes: ``kind`` and an optional ``name`` (how rows and gates refer to it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    name: str | None = None


class Probe:
    """Base class. Subclasses set ``kind``, ``config_class``, ``metrics`` and implement :meth:`run`.

    ``metrics`` lists every metric the kind can emit; :meth:`produces` narrows it to what this configured probe
    emits for one model (e.g. ``median_l2`` only for L2 attacks). Gates are checked against it when the suite is
    loaded, and a contract test holds every registered probe's rows to it.
    """

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[ProbeConfig]] = ProbeConfig
    metrics: ClassVar[tuple[str, ...]] = ()
    pair: ClassVar[bool] = False       # runs on (teacher, other model) pairs
    derived: ClassVar[bool] = False    # computed from other probes' results, runs nothing
    multi_row: ClassVar[bool] = False  # several rows per (model, metric): not gateable
    retainable: ClassVar[bool] = False
    needs_threat_model: ClassVar[bool] = True  # attacks inputs within the suite's threat model

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

    def units(self, roles: list[str]) -> list[tuple[str, ...]]:
        if self.derived:
            return []
        if self.pair:
            return [("teacher", role) for role in roles if role != "teacher"]
        return [(role,) for role in roles]

    def check_models(self, models: Mapping[str, nn.Module], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        """Check what depends on the loaded models (e.g. recorded training members) before anything is written;
        raise UserInputError naming the field."""

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        raise NotImplementedError

    def run_unit(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        """:meth:`run`, plus a ``non_finite_outputs`` flag for each model of the unit whose logits were NaN or
        infinite, on the clean evaluation data or under an attack. The clean pass is cached for the run, so making
        sure every model of every unit had one costs one forward pass per model, whatever the probe."""
        result = self.run(ctx, roles)
        for role in roles:
            ctx.clean_pred(role)
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
