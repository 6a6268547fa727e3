"""The image classifier family's side of a probe unit: :class:`ImageContext` (the evaluation points (x, y) in [0, 1],
each model's cached clean predictions, non-finite-logit checks), running an attack over the evaluation set in
batches (:func:`run_attack`), what an attack did to one model (:func:`attack_outcome`), the logit-rescaling wrapper
of the masking checks (:class:`ScaledLogits`), and resolving an attack name and its parameters against the suite's
threat model (:class:`AttackSpec`, :func:`resolve_attack`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustdistill import attacks
from robustdistill.audits.probes.base import EvalContext, json_safe
from robustdistill.audits.schema import ThreatModel
from robustdistill.errors import UserInputError
from robustdistill.utils import model_device


@dataclass(kw_only=True)
class ImageContext(EvalContext):
    """An image classifier unit's view: the evaluation points (CPU, [0, 1]) and labels, the report's example
    indices and the probe whose adversarial examples fill the report's grid."""

    x: torch.Tensor
    y: torch.Tensor
    example_idx: np.ndarray | None = None
    examples_probe: str | None = None
    _clean_pred: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def check_outputs(self, role: str) -> None:
        self.clean_pred(role)  # cached for the run: one forward pass per model, whatever the probes

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
            self.note_non_finite(role, f"NaN or infinite logits on {bad} of {len(x)} {inputs}")
        return pred


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



def attack_outcome(ctx: ImageContext, role: str, x_adv: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(clean correct, robust correct = clean correct and still correct under attack, adversarial predictions)."""
    clean = (ctx.clean_pred(role) == ctx.y).numpy()
    adv_pred = ctx.predict(role, x_adv, "adversarial inputs")
    robust = clean & (adv_pred == ctx.y).numpy()
    return clean, robust, adv_pred


# Expected work of one attack run, in gradient steps over the evaluation points (a forward pass is about a third):
# what the audit's progress bar weighs units by. Measured on digits (cnn-small, 359 points): clean 0.03 s, FGSM
# 0.09 s, PGD-20 1.0 s, AutoAttack 35 s, masking 17 s. AutoAttack's later stages run only on the points still robust:
# guessed at this fraction.
FORWARD = 1 / 3
_STILL_ROBUST = 0.2


def attack_cost(params: Mapping[str, Any]) -> float:
    """Expected gradient steps of one attack run from its params (as :meth:`AttackSpec.describe` gives them)."""
    name = str(params.get("attack", "pgd"))
    steps = float(params.get("steps") or 0)
    restarts = float(params.get("restarts") or 1)
    queries = float(params.get("n_queries") or params.get("queries") or 0)
    targets = float(params.get("n_target_classes") or 9)
    if name == "fgsm":
        return 1.0 + FORWARD
    if name == "autoattack":
        steps = steps or 100
        later = 2 * targets * steps + (queries or 5000) * FORWARD  # APGD-T, FAB-T, Square on what is left
        return steps + _STILL_ROBUST * later
    if name == "square":
        return (queries or 5000) * FORWARD * restarts
    if name in ("apgd-t", "fab-t"):
        return (steps or 100) * targets * restarts
    if name == "cw-l2":
        return (steps or 1000) * float(params.get("binary_steps") or 9)
    return (steps or 20) * restarts + FORWARD
