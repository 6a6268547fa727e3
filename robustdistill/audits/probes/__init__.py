"""Audit probes: one small class per kind, each measuring teacher AND student (and any extra model).

A probe is configured by one ``[[probes]]`` table of a suite (``kind`` picks the class) and runs as *units*: one
per model for per-model probes (clean, attack, curve, masking), one per (teacher, other model) pair for pair probes
(transfer, agreement). A unit returns rows in the report.json schema (DESIGN.md)::

    {"probe", "model", "metric", "value", "ci95", "n", "params"}

plus per-point masks (which evaluated points stayed correct), which the runner uses for retention, for the
masking checks across probes, and for nothing else. Retention is derived from the attack units' masks.

Every attack runs with the suite's seed, identically on every model (Carlini et al. 2019, "On Evaluating
Adversarial Robustness": fix seeds, run the identical attack on the models compared).

The package: :mod:`~robustdistill.audits.probes.base` (Probe, ProbeConfig, EvalContext, UnitResult, the PROBES
registry, rows), :mod:`~robustdistill.audits.probes.image` (clean, attack, curve),
:mod:`~robustdistill.audits.probes.pairs` (transfer, agreement, retention),
:mod:`~robustdistill.audits.probes.masking` (gradient-masking checks), :mod:`~robustdistill.audits.probes.privacy`
(membership inference) and :mod:`robustdistill.audits.size` (model size). Importing this package registers them all.
"""

from __future__ import annotations

from robustdistill.audits.probes.base import (NON_FINITE, PROBES, AttackSpec, EvalContext, Probe, ProbeConfig,
                                              ScaledLogits, UnitResult, accuracy_row, attack_outcome, build_probe,
                                              json_safe, non_finite_flag, predict, predict_checked, resolve_attack,
                                              run_attack, value_row)
from robustdistill.audits.probes.image import (EXAMPLE_PREFERENCE, AttackConfig, AttackProbe, CleanProbe, CurveConfig,
                                               CurveProbe, default_examples_probe, save_examples)
from robustdistill.audits.probes.pairs import (AgreementProbe, PairAttackConfig, PairAttackProbe, RetentionConfig,
                                               RetentionProbe, TransferProbe)
from robustdistill.audits.probes.masking import MaskingConfig, MaskingProbe
# Imported for their registrations (in this order, as before the split): the mia-* kinds and the size kind.
from robustdistill.audits.probes import privacy as _privacy_probes  # noqa: F401
from robustdistill.audits import size as _size_probe  # noqa: F401

__all__ = ["PROBES", "AttackSpec", "EvalContext", "Probe", "ProbeConfig", "UnitResult", "build_probe", "resolve_attack"]
