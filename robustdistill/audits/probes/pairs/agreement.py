"""The ``agreement`` probe: how often the teacher and another model predict the same class, clean and under attack."""

from __future__ import annotations

from typing import Any

from robustdistill.audits.probes.base import PROBES, UnitResult, accuracy_row
from robustdistill.audits.probes.image.context import ImageContext, run_attack
from robustdistill.audits.probes.pairs.pair_attack import PairAttackProbe


@PROBES.register("agreement")
class AgreementProbe(PairAttackProbe):
    """Teacher-student top-1 agreement on clean inputs and on adversarial inputs.

    Rows per model M of the pair: ``agreement_clean`` (same top-1 on clean inputs) and ``agreement_adv`` (same top-1
    on adversarial examples crafted against M); ``params.with`` names the other model.
    """

    kind = "agreement"
    metrics = ("agreement_clean", "agreement_adv")

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        return metric == "agreement_adv"

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
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
