"""Audit probes: one file per probe kind, in one folder per report section, each measuring teacher AND student (and
any extra model).

A probe is configured by one ``[[probes]]`` table of a suite (``kind`` picks the class), declares the model family
it applies to (``family``: "classifier", ...; robustdistill.audits.families) and the report section that shows its
rows (``group``), and runs as *units*: one per model for per-model probes (clean, attack, curve, masking), one per
(teacher, other model) pair for pair probes (transfer, agreement). A unit returns rows in the report.json schema
(DESIGN.md)::

    {"probe", "model", "metric", "value", "ci95", "n", "params"}

plus per-point masks (which evaluated points stayed correct), which the family uses for derived rows (retention) and
cross-probe checks (gradient masking), and for nothing else.

Every attack runs with the suite's seed, identically on every model (Carlini et al. 2019, "On Evaluating
Adversarial Robustness": fix seeds, run the identical attack on the models compared).

The package: :mod:`~robustdistill.audits.probes.base` (Probe, ProbeConfig, EvalContext, UnitResult, the PROBES
registry, rows; nothing family-specific) and one folder per group: ``image/`` (clean, attack, curve, and the image
family's unit context), ``masking/``, ``pairs/`` (transfer, agreement, retention), ``privacy/`` (mia-loss,
mia-confidence, mia-lira) and ``size/``. Adding a probe is one new file in a group's folder: importing this package
imports every module under it, so the registry and the contract tests (tests/audits/test_probe_metrics_contract.py)
pick it up.
"""

from __future__ import annotations

import importlib
import pkgutil

from robustdistill.audits.probes.base import (NON_FINITE, PROBES, EvalContext, Probe, ProbeConfig, UnitResult,
                                              accuracy_row, build_probe, json_safe, non_finite_flag, value_row)


def _import_all() -> list[str]:
    """Import every module of the package (sorted, so the order is the same everywhere); they register themselves."""
    names = sorted(m.name for m in pkgutil.walk_packages(__path__, prefix=f"{__name__}."))
    for name in names:
        importlib.import_module(name)
    return names


MODULES = _import_all()

from robustdistill.audits.probes.image.attack import EXAMPLE_PREFERENCE, default_examples_probe  # noqa: E402
from robustdistill.audits.probes.image.context import (AttackSpec, ImageContext, ScaledLogits,  # noqa: E402
                                                       attack_outcome, predict, predict_checked, resolve_attack,
                                                       run_attack)

__all__ = ["MODULES", "NON_FINITE", "PROBES", "AttackSpec", "EvalContext", "ImageContext", "Probe", "ProbeConfig",
           "ScaledLogits", "UnitResult", "EXAMPLE_PREFERENCE", "accuracy_row", "attack_outcome", "build_probe",
           "default_examples_probe", "json_safe", "non_finite_flag", "predict", "predict_checked", "resolve_attack",
           "run_attack", "value_row"]
