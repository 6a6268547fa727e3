"""The ``gcg-transfer`` probe: the teacher's GCG suffixes on the other model, and the other model's on the teacher."""

from __future__ import annotations

import numpy as np

from robustdistill.audits.probes.base import PROBES, UnitResult, accuracy_row
from robustdistill.audits.probes.language.context import ATTACKED, LanguageContext
from robustdistill.audits.probes.language.jailbreak import JailbreakProbe


@PROBES.register("gcg-transfer")
class GCGTransferProbe(JailbreakProbe):
    """Transfer of GCG suffixes between teacher and model, both directions (rows filed under the model)."""

    kind = "gcg-transfer"
    pair = True
    metrics = ("transfer_asr", "reverse_transfer_asr")

    def expected_cost(self) -> float:
        return 2 * super().expected_cost()  # when no gcg probe made the suffixes already

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        teacher, other = roles
        indices, prompts = self.attacked(ctx)
        written: list[str] = []
        from_teacher, name, _, _ = self.suffixes(ctx, teacher)
        written += [name] if name else []
        from_other, name, _, _ = self.suffixes(ctx, other)
        written += [name] if name else []
        on_other = self.outcomes(ctx, other, prompts, from_teacher)
        on_teacher = self.outcomes(ctx, teacher, prompts, from_other)
        params = self.row_params()
        rows = [accuracy_row(self.name, other, "transfer_asr", np.array(on_other), {**params, "source": teacher}),
                accuracy_row(self.name, other, "reverse_transfer_asr", np.array(on_teacher),
                             {**params, "source": other, "target": teacher})]
        masks = {other: {ATTACKED: self.mask(ctx, indices), "transfer": self.mask(ctx, indices, on_other)},
                 teacher: {ATTACKED: self.mask(ctx, indices), "transfer": self.mask(ctx, indices, on_teacher)}}
        return UnitResult(rows, masks=masks, artifacts=written)
