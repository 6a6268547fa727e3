"""Audits: suite schema, probes, gradient-masking checks, the runner and its resumable run store.

    from robustdistill.audits import audit
    report = audit("audits/digits.toml", teacher="checkpoints/digits-standard", student=model, out="runs/x")
    report.passed; report.results; report.flags; report.gates

Imports are lazy so that the CLI's parser (which imports robustdistill.audits.commands) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PROBES", "Probe", "Report", "Suite", "audit", "build_report", "load_suite"]

if TYPE_CHECKING:
    from robustdistill.audits.probes import PROBES, Probe
    from robustdistill.audits.build import build_report
    from robustdistill.audits.report import Report
    from robustdistill.audits.runner import audit
    from robustdistill.audits.schema import Suite, load_suite

_WHERE = {"PROBES": "probes", "Probe": "probes", "Report": "report", "audit": "runner", "build_report": "build",
          "Suite": "schema", "load_suite": "schema"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"robustdistill.audits.{_WHERE[name]}"), name)
    raise AttributeError(name)
