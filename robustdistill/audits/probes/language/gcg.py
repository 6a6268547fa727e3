"""The ``gcg`` probe: GCG suffixes against each model (see jailbreak.py for the settings and the suffix cache)."""

from __future__ import annotations

import numpy as np

from robustdistill.audits.probes.base import PROBES, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.language.context import ATTACKED, LanguageContext
from robustdistill.audits.probes.language.jailbreak import JailbreakProbe
from robustdistill.audits.probes.language.judging import make_judge


@PROBES.register("gcg")
class GCGProbe(JailbreakProbe):
    """GCG jailbreak: attack success rate with and without the optimised suffix (Wilson intervals)."""

    kind = "gcg"
    metrics = ("asr", "direct_asr", "final_loss")

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        from robustdistill.attacks.llm.evaluate import evaluate_suffix

        (role,) = roles
        indices, prompts = self.attacked(ctx)
        judge = make_judge(self.config.judge, self.where)
        direct = [o.success for o in evaluate_suffix(ctx.models[role], prompts, "", judge,
                                                        self.config.max_new_tokens)]
        suffixes, written, losses = self.suffixes(ctx, role)
        broken = self.outcomes(ctx, role, prompts, suffixes)
        params = self.row_params()
        rows = [accuracy_row(self.name, role, "asr", np.array(broken), params),
                accuracy_row(self.name, role, "direct_asr", np.array(direct), params),
                value_row(self.name, role, "final_loss", float(np.mean(losses)), len(losses), params)]
        masks = {role: {ATTACKED: self.mask(ctx, indices), "direct": self.mask(ctx, indices, direct),
                        "broken": self.mask(ctx, indices, broken)}}
        return UnitResult(rows, masks=masks, artifacts=[written] if written else [])
