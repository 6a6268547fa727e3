"""The probes comparing the teacher with another model: ``transfer`` (adversarial examples crafted on one model,
evaluated on the other, both ways), ``agreement`` (how often the two predict the same class, clean and under attack)
and ``retention`` (student over teacher robust accuracy, derived from the attack probes' per-point results).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from robustdistill.audits.probes.base import (PROBES, EvalContext, Probe, ProbeConfig, UnitResult, accuracy_row,
                                              attack_outcome, resolve_attack, run_attack, value_row)
from robustdistill.stats import proportion_row

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
