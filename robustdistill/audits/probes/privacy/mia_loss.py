"""The ``mia-loss`` probe: loss-threshold membership inference."""

from __future__ import annotations

import numpy as np

from robustdistill.attacks.privacy import membership, scores
from robustdistill.audits.probes.base import PROBES, EvalContext
from robustdistill.audits.probes.privacy.membership import MembershipProbe, View, population_logits


@PROBES.register("mia-loss")
class LossProbe(MembershipProbe):
    """Loss-threshold membership inference (Yeom, Giacomelli, Fredrikson and Jha, CSF 2018): members have lower
    loss. The score is minus the cross-entropy of the true label; metrics are threshold-free (AUC, ROC)."""

    kind = "mia-loss"

    def score(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, view: View) -> np.ndarray:
        return scores.loss_score(population_logits(ctx.models[role], truth, ctx)[0], truth.population.y).numpy()
