"""Audits: suite schema, probes, gradient-masking checks, the runner and its resumable run store.

    from robustdistill import audit
    report = audit("audits/digits.toml", teacher="checkpoints/digits-standard", student=model, out="runs/x")
    report.passed; report.results; report.flags; report.gates
"""

from robustdistill.audits.probes import PROBES, Probe
from robustdistill.audits.runner import Report, audit, build_report
from robustdistill.audits.schema import Suite, load_suite

__all__ = ["PROBES", "Probe", "Report", "Suite", "audit", "build_report", "load_suite"]
