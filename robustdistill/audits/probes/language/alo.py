"""The ``alo-asr`` rows: MixAT's worst case over a model's jailbreak attacks (the family derives them)."""

from __future__ import annotations

from robustdistill.audits.probes.base import PROBES, Probe


@PROBES.register("alo-asr")
class AloAsrProbe(Probe):
    """ALO-ASR ("at least one attack succeeds"): the fraction of attacked prompts that the direct request, the
    model's own GCG suffix or a transferred suffix broke. Derived from the jailbreak probes' per-prompt results
    when the report is built; it is always in the report when they ran."""

    kind = "alo-asr"
    family = "language-model"
    group = "jailbreak"
    metrics = ("alo_asr",)
    derived = True
    needs_threat_model = False
