"""The audit's verdict, decided once from the gates, the flags and the state of the run, and stored in report.json.

The CLI's summary, the exit code, report.md, report.html and the demo's index all read this one decision, so they
cannot disagree::

    "verdict": {"passed": false,
                "summary": "FAIL (1 of 3 gates failed; gradient masking: student (loss_sensitive))",
                "reasons": [{"kind": "gate", "text": "..."}, {"kind": "gradient_masking", "text": "..."}],
                "notes": [],
                "policy": {"gradient_masking": "fail"}}

A run fails when any of these holds (each is one reason, in this order):

- ``gate``: a gate failed, or could not pass (missing, untrusted, invalid);
- ``incomplete``: a planned probe unit did not finish;
- ``non_finite_outputs``: a model gave NaN or infinite logits (its every number is void);
- ``gradient_masking``: a model is flagged for gradient masking, gates or none (its robust accuracy overstates its
  robustness), unless the suite opts out with ``[verdict] gradient_masking = "warn"`` - then the flag is a note;
- ``run_store``: results.jsonl was edited after the run (the manifest's hash chain is "broken").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robustdistill.audits import masking
from robustdistill.audits.probes import NON_FINITE
from robustdistill.audits.store import BROKEN

DEFAULT_POLICY = {"gradient_masking": "fail"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def flagged_checks(flags: Sequence[Mapping[str, Any]], kind: str) -> dict[str, list[str]]:
    """model -> the checks that flagged it with ``kind``, in flag order."""
    out: dict[str, list[str]] = {}
    for item in flags:
        if item.get("kind") == kind:
            checks = out.setdefault(str(item.get("model")), [])
            if item.get("check") not in checks:
                checks.append(str(item.get("check")))
    return out


def gate_text(gate: Mapping[str, Any]) -> str:
    """``gate student.clean.accuracy >= 0.8 failed: value 0.61`` (and the gate's note, if any)."""
    value = "no value" if gate.get("value") is None else f"value {gate['value']:.4g}"
    note = f"; {gate['note']}" if gate.get("note") else ""
    return f"gate {gate['metric']} {gate['op']} {gate['threshold']:g} {gate.get('status', 'failed')}: {value}{note}"


def decide(gates: Sequence[Mapping[str, Any]], flags: Sequence[Mapping[str, Any]], missing: Sequence[str],
           policy: Mapping[str, Any] | None = None, chain: str | None = None) -> dict[str, Any]:
    """The verdict of a run (module docstring): ``passed``, a one-line ``summary`` and the ``reasons``."""
    policy = {**DEFAULT_POLICY, **{k: v for k, v in (policy or {}).items() if k in DEFAULT_POLICY}}
    reasons: list[dict[str, str]] = []
    notes: list[str] = []
    short: list[str] = []

    failed = [g for g in gates if not g.get("passed")]
    reasons += [{"kind": "gate", "text": gate_text(g)} for g in failed]
    if failed:
        short.append(f"{len(failed)} of {_plural(len(gates), 'gate')} failed")
    if missing:
        reasons.append({"kind": "incomplete", "text": f"{_plural(len(missing), 'probe unit')} did not finish "
                        f"({', '.join(missing)}); continue with --resume"})
        short.append(f"incomplete: {_plural(len(missing), 'probe unit')} did not finish")
    broken = flagged_checks(flags, NON_FINITE)
    for model in broken:
        reasons.append({"kind": NON_FINITE, "text": f"{model} gives NaN or infinite outputs: every number measured "
                        "on it is void"})
    if broken:
        short.append(f"non-finite outputs: {', '.join(broken)}")
    masked = flagged_checks(flags, masking.KIND)
    named = [f"{model} ({', '.join(checks)})" for model, checks in masked.items()]
    for text in named:
        sentence = f"gradient masking flagged for {text}: its robust accuracy is not to be trusted"
        if policy["gradient_masking"] == "fail":
            reasons.append({"kind": masking.KIND, "text": sentence})
        else:
            notes.append(f"{sentence} (not failing the verdict: the suite sets [verdict] gradient_masking = \"warn\")")
    if masked and policy["gradient_masking"] == "fail":
        short.append(f"gradient masking: {', '.join(named)}")
    if chain == BROKEN:
        reasons.append({"kind": "run_store", "text": "results.jsonl was edited after the run (its hash chain is "
                        "broken): these results are not the run's"})
        short.append("results.jsonl edited after the run")

    passed = not reasons
    if passed:
        short = [f"{_plural(len(gates), 'gate')} passed" if gates else "no gates"]
        short += [_plural(len(notes), "warning")] if notes else []
    summary = f"{'PASS' if passed else 'FAIL'} ({'; '.join(short)})"
    return {"passed": passed, "summary": summary, "reasons": reasons, "notes": notes, "policy": policy}


__all__ = ["decide", "flagged_checks", "gate_text"]
