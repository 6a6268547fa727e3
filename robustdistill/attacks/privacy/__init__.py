"""Privacy attacks: membership inference against classifiers (loss, confidence, LiRA) and causal language models
(loss, zlib, min-k%, min-k%++, reference model: :mod:`robustdistill.attacks.privacy.lm_scores`).

The audit probes (``kind = "mia-loss" | "mia-confidence" | "mia-lira"``) are on the audits side, in
:mod:`robustdistill.audits.probes.privacy`; the scores, LiRA statistics and metrics are plain functions usable on
their own (this package imports nothing of audits, reports or the CLI)::

    from robustdistill.attacks.privacy import membership_metrics
    m = membership_metrics(scores, is_member)      # AUC, balanced accuracy, TPR at 0.1% / 1% FPR, ROC
"""

from robustdistill.attacks.privacy.lira import balanced_design, fit_gaussians, offline_scores, online_scores
from robustdistill.attacks.privacy.lm_scores import lm_membership, lm_scores
from robustdistill.attacks.privacy.metrics import MembershipMetrics, membership_metrics, tpr_at_fpr
from robustdistill.attacks.privacy.scores import confidence_score, lira_score, loss_score

__all__ = ["MembershipMetrics", "balanced_design", "confidence_score", "fit_gaussians", "lira_score", "lm_membership",
           "lm_scores", "loss_score", "membership_metrics", "offline_scores", "online_scores", "tpr_at_fpr"]
