"""The ``mia-confidence`` probe: confidence-threshold membership inference."""

from __future__ import annotations

import numpy as np

from robustdistill.attacks.privacy import membership, scores
from robustdistill.audits.probes.base import PROBES, EvalContext
from robustdistill.audits.probes.privacy.membership import MembershipProbe, View, population_logits


@PROBES.register("mia-confidence")
class ConfidenceProbe(MembershipProbe):
    """Confidence-threshold membership inference (Salem et al., NDSS 2019, "ML-Leaks"): members get more confident
    predictions. The score is the largest softmax probability; it needs no label."""

    kind = "mia-confidence"

    def score(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, view: View) -> np.ndarray:
        return scores.confidence_score(population_logits(ctx.models[role], truth, ctx)[0]).numpy()
