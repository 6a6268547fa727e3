"""The ``gcg`` probe: GCG suffixes against each model (see jailbreak.py for the settings and the suffix cache)."""

from __future__ import annotations

import numpy as np

from robustdistill.audits.probes.base import PROBES, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.language.context import ATTACKED, LanguageContext
from robustdistill.audits.probes.language.jailbreak import JailbreakProbe


@PROBES.register("gcg")
class GCGProbe(JailbreakProbe):
    """GCG jailbreak: attack success rate with and without the optimised suffix (Wilson intervals)."""

    kind = "gcg"
    metrics = ("asr", "direct_asr", "init_suffix_asr", "final_loss")

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        indices, prompts = self.attacked(ctx)
        # The plain requests' responses are the run's shared ones (the refusal probe may have generated them).
        direct = self.judge.judge(prompts, ctx.responses(role, prompts, self.config.max_new_tokens))
        suffixes, written, losses, initial = self.suffixes(ctx, role)
        broken = self.outcomes(ctx, role, prompts, suffixes)
        # The search's starting suffix, unoptimised: if it already gets through, the refusal is brittle, not GCG strong.
        unoptimised = self.outcomes(ctx, role, prompts, initial)
        params = self.row_params()
        rows = [accuracy_row(self.name, role, "asr", np.array(broken), params),
                accuracy_row(self.name, role, "direct_asr", np.array(direct), params),
                accuracy_row(self.name, role, "init_suffix_asr", np.array(unoptimised), params),
                value_row(self.name, role, "final_loss", float(np.mean(losses)), len(losses), params)]
        masks = {role: {ATTACKED: self.mask(ctx, indices), "direct": self.mask(ctx, indices, direct),
                        "init": self.mask(ctx, indices, unoptimised), "broken": self.mask(ctx, indices, broken)}}
        return UnitResult(rows, masks=masks, artifacts=[written] if written else [])
