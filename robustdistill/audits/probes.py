"""Audit probes: one small class per kind, each measuring teacher AND student (and any extra model).

A probe is configured by one ``[[probes]]`` table of a suite (``kind`` picks the class) and runs as *units*: one
per model for per-model probes (clean, attack, curve, masking), one per (teacher, other model) pair for pair probes
(transfer, agreement). A unit returns rows in the report.json schema (DESIGN.md)::

    {"probe", "model", "metric", "value", "ci95", "n", "params"}

plus per-point masks (which evaluated points stayed correct), which the runner uses for retention, for the
masking checks across probes, and for nothing else. Retention is derived from the attack units' masks.

Every attack runs with the suite's seed, identically on every model (Carlini et al. 2019, "On Evaluating
Adversarial Robustness": fix seeds, run the identical attack on the models compared).
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
from pydantic import ConfigDict, Field, ValidationError
from torch import nn

from robustdistill import attacks
from robustdistill.audits import masking
from robustdistill.audits.schema import PROBE_NAME_PATTERN, ThreatModel, user_error
from robustdistill.audits.stats import proportion_row
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_QUERIES, check_eps, check_int, check_restarts, check_steps
from robustdistill.registry import Registry

log = logging.getLogger(__name__)

PROBES: Registry[type["Probe"]] = Registry("probe")

# Preference for the attack whose examples go in the report's example grid (strongest first).
EXAMPLE_PREFERENCE = ("autoattack", "apgd-t", "apgd-ce", "fab-t", "cw-linf", "pgd", "cw-l2", "square", "fgsm")


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


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


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


# --------------------------------------------------------------------------------------------------------------
# Probes


@PROBES.register("clean")
class CleanProbe(Probe):
    """Clean (natural) top-1 accuracy with its 95% Wilson interval."""

    kind = "clean"
    metrics = ("accuracy",)
    retainable = True
    needs_threat_model = False

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        correct = (ctx.clean_pred(role) == ctx.y).numpy()
        return UnitResult([accuracy_row(self.name, role, "accuracy", correct, self.row_params())],
                          masks={role: {"correct": correct}})


class AttackConfig(ProbeConfig):
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)


@PROBES.register("attack")
class AttackProbe(Probe):
    """Robust accuracy under one attack (eps and norm from the threat model unless params set them).

    Rows: ``robust_accuracy`` (points correct both clean and under attack, over all points, so it never exceeds
    clean accuracy), ``success_rate`` (of the clean-correct points, the fraction the attack fooled) and, for L2
    attacks, ``median_l2`` (median L2 norm of the successful perturbations).
    """

    kind = "attack"
    config_class = AttackConfig
    metrics = ("robust_accuracy", "success_rate", "median_l2")
    retainable = True
    config: AttackConfig
    # AutoAttack also reports robust_accuracy_after_<stage> per component (cumulative, as the official code).

    def default_name(self) -> str:
        return self.config.attack

    def validate(self) -> None:
        self.spec_ = resolve_attack(self.config.attack, self.config.params, self.threat_model, self.seed, self.where)
        # AutoAttack's components are fixed when it is built: they name its per-stage rows.
        self.stages = tuple(c.replace("-", "_") for c in getattr(self.spec_.build(), "attacks", ()))

    def produces(self, role: str) -> tuple[str, ...]:
        metrics = ["robust_accuracy", "success_rate"] + (["median_l2"] if self.norm == "l2" else [])
        return (*metrics, *(f"robust_accuracy_after_{stage}" for stage in self.stages))

    @property
    def attack(self) -> str:
        return self.config.attack

    @property
    def eps(self) -> Any:
        return self.spec_.kwargs.get("eps")

    @property
    def norm(self) -> str:
        return self.spec_.norm

    def params(self) -> dict[str, Any]:
        return self.spec_.describe()

    def row_params(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, **self.params(), **extra}

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        model = ctx.models[role]
        atk = self.spec_.build()
        x_adv = run_attack(atk, model, ctx.x, ctx.y, ctx.batch_size)
        clean, robust, adv_pred = attack_outcome(ctx, role, x_adv)
        fooled = clean & ~robust
        params = self.row_params()
        rows = [accuracy_row(self.name, role, "robust_accuracy", robust, params)]
        value, ci, n = proportion_row(fooled[clean])
        rows.append(value_row(self.name, role, "success_rate", value, n, params, ci))
        masks = {"robust": robust, "clean": clean}
        if self.norm == "l2":
            norms = (x_adv - ctx.x).flatten(1).norm(dim=1).numpy()[fooled]
            rows.append(value_row(self.name, role, "median_l2", float(np.median(norms)) if norms.size else None,
                                  int(norms.size), params))
        broken_by = getattr(atk, "audit_broken_by", None)
        if broken_by and len(broken_by) == ctx.n:
            # AutoAttack: which component broke each point (the black-box Square finding what the gradient
            # attacks missed is a masking signal), and robust accuracy after each stage.
            still = clean.copy()
            for component in getattr(atk, "attacks", ()):
                broke = np.array([b == component for b in broken_by])
                masks[f"broken_by_{component.replace('-', '_')}"] = broke
                still &= ~broke
                rows.append(accuracy_row(self.name, role, f"robust_accuracy_after_{component.replace('-', '_')}",
                                         still.copy(), {**params, "stage": component}))
        result = UnitResult(rows, masks={role: masks})
        if ctx.examples_probe == self.name and ctx.artifacts is not None and ctx.example_idx is not None:
            result.artifacts.append(save_examples(ctx, role, self.name, x_adv, adv_pred))
        return result


def save_examples(ctx: EvalContext, role: str, probe: str, x_adv: torch.Tensor, adv_pred: torch.Tensor) -> str:
    """Write artifacts/examples-<role>.npz (the runner merges the roles into examples.npz)."""
    from robustdistill.utils import atomic_path

    assert ctx.artifacts is not None and ctx.example_idx is not None
    idx = torch.as_tensor(ctx.example_idx, dtype=torch.long)
    name = f"examples-{role}.npz"
    with atomic_path(ctx.artifacts / name) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                index=idx.numpy(),
                clean=ctx.x[idx].numpy().astype(np.float32),
                labels=ctx.y[idx].numpy(),
                adv=x_adv[idx].numpy().astype(np.float32),
                pred_clean=ctx.clean_pred(role)[idx].numpy(),
                pred_adv=adv_pred[idx].numpy(),
                attack=np.array(probe),
            )
    return name


class CurveConfig(ProbeConfig):
    attack: str = "pgd"
    params: dict[str, Any] = Field(default_factory=dict)
    eps: list[float] = Field(min_length=1)


@PROBES.register("curve")
class CurveProbe(Probe):
    """Robust accuracy over a list of eps for one attack (a robustness curve; eps = 0 is clean accuracy)."""

    kind = "curve"
    config_class = CurveConfig
    metrics = ("robust_accuracy",)
    multi_row = True
    config: CurveConfig

    def validate(self) -> None:
        if "eps" in self.config.params:
            raise UserInputError(f"{self.where}.params.eps", "a curve sets eps from its own list", f"use {self.where}.eps")
        for i, eps in enumerate(self.config.eps):
            if not (math.isfinite(eps) and eps >= 0):
                raise UserInputError(f"{self.where}.eps[{i}]", f"must be a finite number >= 0, got {eps}", "e.g. 0.125")
        self.spec_ = resolve_attack(self.config.attack, self.config.params, self.threat_model, self.seed, self.where)
        for i, eps in enumerate(self.config.eps):
            if eps > 0:
                try:
                    self.spec_.build(eps=eps)
                except UserInputError as exc:
                    raise UserInputError(f"{self.where}.eps[{i}]", exc.problem, exc.fix) from None

    def params(self) -> dict[str, Any]:
        return {**self.spec_.describe(), "eps": [float(e) for e in self.config.eps]}

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        rows, masks = [], {}
        for eps in sorted(self.config.eps):
            params = self.row_params(**self.spec_.describe(eps=float(eps)))
            if eps == 0:
                clean = (ctx.clean_pred(role) == ctx.y).numpy()
                robust = clean
            else:
                x_adv = run_attack(self.spec_.build(eps=eps), ctx.models[role], ctx.x, ctx.y, ctx.batch_size)
                _, robust, _ = attack_outcome(ctx, role, x_adv)
            rows.append(accuracy_row(self.name, role, "robust_accuracy", robust, params))
            masks[f"robust@{eps:g}"] = robust
        return UnitResult(rows, masks={role: masks})


class PairAttackConfig(ProbeConfig):
    attack: str = "pgd"
    params: dict[str, Any] = Field(default_factory=lambda: {"steps": 20})


class PairAttackProbe(Probe):
    """A probe over the teacher-student pair that runs one attack (shared by transfer and agreement)."""

    config_class = PairAttackConfig
    pair = True
    config: PairAttackConfig

    def validate(self) -> None:
        self.spec_ = resolve_attack(self.config.attack, self.config.params, self.threat_model, self.seed, self.where)

    def params(self) -> dict[str, Any]:
        return self.spec_.describe()


@PROBES.register("transfer")
class TransferProbe(PairAttackProbe):
    """Transfer: adversarial examples crafted on the teacher evaluated on the student, and the reverse.

    Rows (``model`` is the model evaluated, ``params.source`` the one attacked): ``transfer_accuracy`` (points the
    target classifies correctly both clean and on the source's adversarial examples, over all points) and
    ``transfer_success_rate`` (of the points the attack fooled on the source and the target got right clean,
    the fraction that also fool the target).
    """

    kind = "transfer"
    metrics = ("transfer_accuracy", "transfer_success_rate")

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        rows: list[dict[str, Any]] = []
        masks: dict[str, dict[str, np.ndarray]] = {}
        adv = {role: run_attack(self.spec_.build(), ctx.models[role], ctx.x, ctx.y, ctx.batch_size) for role in roles}
        for source, target in (roles, roles[::-1]):
            source_fooled = (ctx.predict(source, adv[source], "adversarial inputs") != ctx.y).numpy()
            clean, robust, _ = attack_outcome(ctx, target, adv[source])
            params = self.row_params(source=source, target=target)
            rows.append(accuracy_row(self.name, target, "transfer_accuracy", robust, params))
            eligible = source_fooled & clean
            value, ci, n = proportion_row(~robust[eligible])
            rows.append(value_row(self.name, target, "transfer_success_rate", value, n, params, ci))
            masks[target] = {f"transfer_from_{source}": robust}
        return UnitResult(rows, masks=masks)


@PROBES.register("agreement")
class AgreementProbe(PairAttackProbe):
    """Teacher-student top-1 agreement on clean inputs and on adversarial inputs.

    Rows per model M of the pair: ``agreement_clean`` (same top-1 on clean inputs) and ``agreement_adv`` (same top-1
    on adversarial examples crafted against M); ``params.with`` names the other model.
    """

    kind = "agreement"
    metrics = ("agreement_clean", "agreement_adv")

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        a, b = roles
        rows: list[dict[str, Any]] = []
        clean_agree = (ctx.clean_pred(a) == ctx.clean_pred(b)).numpy()
        for role, other in ((a, b), (b, a)):
            x_adv = run_attack(self.spec_.build(), ctx.models[role], ctx.x, ctx.y, ctx.batch_size)
            adv_agree = (ctx.predict(role, x_adv, "adversarial inputs") == ctx.predict(other, x_adv, "adversarial inputs")).numpy()
            rows.append(accuracy_row(self.name, role, "agreement_clean", clean_agree, self.row_params(**{"with": other})))
            rows.append(accuracy_row(self.name, role, "agreement_adv", adv_agree,
                                     self.row_params(**{"with": other, "crafted_on": role})))
        return UnitResult(rows)


class RetentionConfig(ProbeConfig):
    of: list[str] | None = None


@PROBES.register("retention")
class RetentionProbe(Probe):
    """Robustness retention: student robust accuracy / teacher robust accuracy, per attack (and clean accuracy).

    Derived from the attack probes' per-point results (nothing extra runs); the 95% interval is a paired
    bootstrap over the evaluated points. Retention rows are always in the report; listing this probe only
    restricts them to ``of``.
    """

    kind = "retention"
    config_class = RetentionConfig
    metrics = ("robust_accuracy_retention", "accuracy_retention")
    derived = True
    multi_row = True
    needs_threat_model = False
    config: RetentionConfig


class MaskingConfig(ProbeConfig):
    """Settings of the gradient-masking checks (defaults: Carlini et al. 2019; Croce & Hein 2020)."""

    steps: int = Field(10, ge=1)
    more_steps: int = Field(100, ge=1)
    restarts: int = Field(5, ge=1)
    large_eps: float | None = Field(None, gt=0)
    large_eps_max_accuracy: float = Field(0.1, ge=0, le=1)
    scales: list[float] = Field(default_factory=lambda: [0.01, 100.0])
    square_queries: int = Field(1000, ge=0)
    tolerance: float = Field(masking.TOLERANCE, ge=0, le=1)
    loss_tolerance: float = Field(masking.LOSS_TOLERANCE, ge=0, le=1)


@PROBES.register("masking")
class MaskingProbe(Probe):
    """Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019), each a flag with its evidence:

    (a) an iterative attack (PGD) weaker than single-step FGSM; (b) a black-box attack (Square) finding examples
    the gradient attacks missed; (c) robust accuracy not near 0 at a very large eps (0.5 L-inf: every image can
    be moved to flat grey); (d) accuracy still falling as steps or restarts grow (PGD-``steps`` vs
    PGD-``more_steps`` vs ``restarts`` restarts); (e) numbers that change when the logits are rescaled (CE-PGD on
    the logits x ``scales``) or when the CE loss is swapped for the CW margin (defensive distillation's
    signature). Differences count only beyond two paired standard errors and ``tolerance`` (``loss_tolerance`` for
    (e): on a healthy adversarially trained model the CW margin can beat cross-entropy by several points).
    """

    kind = "masking"
    config_class = MaskingConfig
    metrics = ("single_step_robust_accuracy", "pgd_robust_accuracy", "pgd_more_steps_robust_accuracy",
               "pgd_restarts_robust_accuracy", "large_eps_robust_accuracy", "scaled_logits_robust_accuracy",
               "cw_loss_robust_accuracy", "worst_case_robust_accuracy", "checks_failed")
    config: MaskingConfig

    def validate(self) -> None:
        for i, scale in enumerate(self.config.scales):
            # Beyond 1e6 either way the scaled logits overflow or vanish in float32: a check of nothing.
            if not (math.isfinite(scale) and 1e-6 <= scale <= 1e6):
                raise UserInputError(f"{self.where}.scales[{i}]", f"must be a number in [1e-6, 1e6], got {scale}", "e.g. 0.01")
        cfg = self.config
        check_steps(f"{self.where}.steps", cfg.steps)
        check_steps(f"{self.where}.more_steps", cfg.more_steps)
        check_restarts(f"{self.where}.restarts", cfg.restarts)
        check_int(f"{self.where}.square_queries", cfg.square_queries, 0, MAX_QUERIES)
        if cfg.large_eps is not None:
            check_eps(f"{self.where}.large_eps", cfg.large_eps, self.threat_model.norm)
        if self.threat_model.eps <= 0:
            raise UserInputError("threat_model.eps", "the masking checks need eps > 0", "set a positive eps")

    def produces(self, role: str) -> tuple[str, ...]:
        # worst_case runs Square on top of the gradient attacks: no Square queries, no worst case.
        return tuple(m for m in self.metrics if m != "worst_case_robust_accuracy" or self.config.square_queries)

    def gate_metrics(self, role: str) -> tuple[str, ...]:
        return tuple(m for m in self.produces(role) if m != "scaled_logits_robust_accuracy")  # one row per scale

    def params(self) -> dict[str, Any]:
        return {"eps": self.threat_model.eps, "norm": self.threat_model.norm,
                **self.config.model_dump(mode="json", exclude={"kind", "name"})}

    def large_eps(self, x: torch.Tensor) -> float:
        if self.config.large_eps is not None:
            return self.config.large_eps
        if self.threat_model.norm == "linf":
            return 0.5
        return 0.5 * math.sqrt(x[0].numel())  # the L2 ball that holds flat grey from any image

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        cfg, tm = self.config, self.threat_model
        model = ctx.models[role]
        eps, norm, seed = tm.eps, tm.norm, self.seed

        def pgd(steps: int, *, restarts: int = 1, loss: str = "ce", radius: float = eps) -> attacks.Attack:
            return attacks.create("pgd", eps=radius, norm=norm, steps=steps, alpha=2.5 * radius / steps,
                                  restarts=restarts, loss=loss, seed=seed)

        def robust_under(atk: attacks.Attack, target: nn.Module = model) -> np.ndarray:
            x_adv = run_attack(atk, target, ctx.x, ctx.y, ctx.batch_size)
            return attack_outcome(ctx, role, x_adv)[1]

        if norm == "linf":
            single = attacks.create("fgsm", eps=eps, seed=seed)
        else:  # the L2 fast gradient method: one normalised step of size eps, no random start
            single = attacks.create("pgd", eps=eps, norm="l2", steps=1, alpha=eps, random_start=False, seed=seed)
        large = self.large_eps(ctx.x)
        results: dict[str, np.ndarray] = {
            "single_step": robust_under(single),
            "pgd": robust_under(pgd(cfg.steps)),
            "pgd_more_steps": robust_under(pgd(cfg.more_steps)),
            "pgd_restarts": robust_under(pgd(cfg.steps, restarts=cfg.restarts)),
            "large_eps": robust_under(pgd(max(cfg.steps, 20), radius=large)),
            "cw_loss": robust_under(pgd(cfg.steps, loss="cw")),
        }
        scaled = {scale: robust_under(pgd(cfg.steps), ScaledLogits(model, scale)) for scale in cfg.scales}
        model.eval()
        if cfg.square_queries:
            # Square only where every gradient attack failed: the points it could add (check b), at a fraction of
            # the queries. The per-point worst case over all of this probe's attacks is reported with it.
            white = masking.white_box_robust(results, scaled)
            worst = white.copy()
            idx = torch.as_tensor(np.nonzero(white)[0], dtype=torch.long)
            if idx.numel():
                square = attacks.create("square", eps=eps, norm=norm, n_queries=cfg.square_queries, seed=seed)
                x_sub, y_sub = ctx.x[idx], ctx.y[idx]
                x_adv = run_attack(square, model, x_sub, y_sub, ctx.batch_size)
                worst[idx.numpy()] = (ctx.predict(role, x_adv, "adversarial inputs") == y_sub).numpy()
            results["worst_case"] = worst

        flags = masking.probe_checks(role, results, scaled, cfg.tolerance, cfg.large_eps_max_accuracy, eps, large,
                                     steps=cfg.steps, more_steps=cfg.more_steps, restarts=cfg.restarts,
                                     loss_tolerance=cfg.loss_tolerance)
        base = self.row_params()
        describe = {
            "single_step": {"attack": "fgsm" if norm == "linf" else "pgd", "steps": 1, "eps": eps},
            "pgd": {"attack": "pgd", "steps": cfg.steps, "eps": eps, "loss": "ce"},
            "pgd_more_steps": {"attack": "pgd", "steps": cfg.more_steps, "eps": eps, "loss": "ce"},
            "pgd_restarts": {"attack": "pgd", "steps": cfg.steps, "restarts": cfg.restarts, "eps": eps, "loss": "ce"},
            "large_eps": {"attack": "pgd", "steps": max(cfg.steps, 20), "eps": large, "loss": "ce"},
            "cw_loss": {"attack": "pgd", "steps": cfg.steps, "eps": eps, "loss": "cw"},
            "worst_case": {"attacks": "all of the above except large_eps, then square", "n_queries": cfg.square_queries,
                           "eps": eps},
        }
        rows = [accuracy_row(self.name, role, f"{key}_robust_accuracy", mask, {**base, "check": describe[key]})
                for key, mask in results.items()]
        for scale, mask in scaled.items():
            rows.append(accuracy_row(self.name, role, "scaled_logits_robust_accuracy", mask,
                                     {**base, "check": {"attack": "pgd", "steps": cfg.steps, "eps": eps, "loss": "ce",
                                                        "logit_scale": scale}}))
        rows.append(value_row(self.name, role, "checks_failed", float(len(flags)), ctx.n, base))
        masks = {key: mask for key, mask in results.items()} | {f"scaled_x{s:g}": m for s, m in scaled.items()}
        return UnitResult(rows, masks={role: masks}, flags=flags)


def default_examples_probe(probes: list[Probe]) -> str | None:
    """The attack probe whose examples fill the report's grid: the strongest attack in the suite."""
    candidates = [p for p in probes if isinstance(p, AttackProbe)]
    for attack in EXAMPLE_PREFERENCE:
        for probe in candidates:
            if probe.attack == attack:
                return probe.name
    return candidates[0].name if candidates else None


# The membership-inference probes live with the privacy attacks; importing them registers them here.
from robustdistill.attacks.privacy import probes as _privacy_probes  # noqa: E402,F401
from robustdistill.audits import size as _size_probe  # noqa: E402,F401

__all__ = ["PROBES", "AttackSpec", "EvalContext", "Probe", "ProbeConfig", "UnitResult", "build_probe", "resolve_attack"]
