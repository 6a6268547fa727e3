"""The ``transfer`` probe: adversarial examples crafted on one model of the pair, evaluated on the other, both ways."""

from __future__ import annotations

from typing import Any

import numpy as np

from robustdistill.audits.probes.base import PROBES, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.image.context import ImageContext, attack_outcome, run_attack
from robustdistill.audits.probes.pairs.pair_attack import PairAttackProbe
from robustdistill.stats import proportion_row


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

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        return True

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
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
