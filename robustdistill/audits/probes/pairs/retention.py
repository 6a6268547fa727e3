"""The ``retention`` probe: another model's (robust) accuracy over the teacher's, derived from the clean and attack
probes' per-point results (the classifier family computes the rows when the report is built)."""

from __future__ import annotations

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig


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
    family = "classifier"
    group = "transfer-agreement"
    config_class = RetentionConfig
    metrics = ("robust_accuracy_retention", "accuracy_retention")
    derived = True
    multi_row = True
    needs_threat_model = False
    config: RetentionConfig

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        return metric == "robust_accuracy_retention"
