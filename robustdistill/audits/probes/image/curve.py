"""The ``curve`` probe: robust accuracy of each model over a list of epsilons for one attack."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, accuracy_row
from robustdistill.audits.probes.image.context import (ImageContext, attack_cost, attack_outcome, resolve_attack,
                                                       run_attack)
from robustdistill.errors import UserInputError


class CurveConfig(ProbeConfig):
    attack: str = "pgd"
    params: dict[str, Any] = Field(default_factory=dict)
    eps: list[float] = Field(min_length=1)


@PROBES.register("curve")
class CurveProbe(Probe):
    """Robust accuracy over a list of eps for one attack (a robustness curve; eps = 0 is clean accuracy)."""

    kind = "curve"
    family = "classifier"
    group = "image-attacks"
    config_class = CurveConfig
    metrics = ("robust_accuracy",)
    multi_row = True
    config: CurveConfig

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        return True

    @classmethod
    def mask_problem(cls, name: str) -> str | None:
        # The report builder parses the eps out of "robust@<eps>".
        if not name.startswith("robust@"):
            return None
        try:
            eps = float(name.split("@", 1)[1])
        except ValueError:
            return "not robust@<eps>"
        return None if math.isfinite(eps) else "not robust@<eps>"

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

    def expected_cost(self) -> float:
        return attack_cost(self.spec_.describe()) * len(self.config.eps)

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
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
