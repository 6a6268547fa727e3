"""Building the report from the run store: ``build_report(run_dir) -> Report``, and rendering it. Nothing here
depends on the model family: what does is the family's (robustdistill.audits.families).

``build_report`` is a pure function of the stored units in results.jsonl (so a resumed audit gives the same
results as an uninterrupted one): it collects each planned unit's rows and flags, adds the rows and flags the
family derives across units (the classifier family: retention rows and the cross-probe gradient-masking checks),
keeps one non-finite-outputs flag per model, evaluates every gate (``evaluate_gate``; a masking flag voids only the
rows whose probe says they claim robustness), lets the family write its report artifacts (the classifier's
examples.npz), lists the report's sections (one per probe group) and writes report.json. ``clean_row`` gives a unit's rows exactly
the report.json keys; ``render_reports`` writes report.md / report.html through robustdistill.reports.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.audits import families, masking
from robustdistill.audits.families import StoredUnit
from robustdistill.audits.probes import NON_FINITE, PROBES, Probe
from robustdistill.audits.report import ROW_KEYS, Report
from robustdistill.audits.schema import Gate
from robustdistill.audits.store import REPORT, RunStore
from robustdistill.audits.verdict import flagged_checks
from robustdistill.errors import UserInputError
from robustdistill.stats import unpack_mask
from robustdistill.utils import write_json_atomic

log = logging.getLogger(__name__)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the report.json row keys, with plain JSON values."""
    out = {key: row.get(key) for key in ROW_KEYS}
    value = out["value"]
    out["value"] = None if value is None or not np.isfinite(value) else float(value)
    out["ci95"] = None if out["ci95"] is None else [float(v) for v in out["ci95"]]
    out["n"] = None if out["n"] is None else int(out["n"])
    return out


def render_reports(run_dir: Path) -> list[Path]:
    """report.md / report.html by robustdistill.reports, when that module is there."""
    try:
        from robustdistill.reports import render
    except ImportError:
        log.debug("robustdistill.reports.render is not available; wrote report.json only")
        return []
    try:
        return list(render(Path(run_dir)))
    except UserInputError:
        raise
    except Exception as exc:  # a rendering bug must not lose the audit: report.json is already written
        log.warning("rendering the report failed (%s: %s); report.json is complete", type(exc).__name__, exc)
        return []


def build_report(run_dir: str | Path) -> Report:
    """Rebuild report.json from results.jsonl (what ``robustdistill report RUN_DIR`` does before rendering)."""
    run_dir = Path(run_dir)
    stored = RunStore(run_dir).load()  # shapes, plan and duplicates checked; a broken chain fails the verdict
    manifests, units = stored.manifests, stored.units
    first, last = manifests[0], manifests[-1]
    family = families.family(last.get("family", "classifier"))  # runs stored before families were all classifier
    rows: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    missing: list[str] = []
    finished: list[StoredUnit] = []
    for entry in last["plan"]:
        record = units.get(entry["key"])
        if record is None:
            missing.append(f"{entry['probe']} on {'+'.join(entry['roles'])}")
            continue
        rows.extend(record["rows"])
        flags.extend(record.get("flags", []))
        n = int(record["n"])
        masks = {role: {k: unpack_mask(v, n) for k, v in m.items()} for role, m in record.get("masks", {}).items()}
        finished.append(StoredUnit(record["probe"], record["kind"], tuple(entry["roles"]), record.get("params", {}),
                                   masks, tuple(record.get("artifacts", [])), tuple(record["rows"])))
    checkpoints = last.get("checkpoints", {})
    roles = list(checkpoints)
    derived_rows, derived_flags = family.derive(last, finished)
    rows.extend(derived_rows)
    flags.extend(derived_flags)
    flags = one_non_finite_flag_per_model(masking.dedupe(flags))
    invalid = set(flagged_checks(flags, NON_FINITE))
    untrusted = {f["model"]: [] for f in flags if f.get("kind") == masking.KIND}
    for item in flags:
        if item["model"] in untrusted:
            untrusted[item["model"]].append(item["check"])
    classes = probe_classes(last["suite"], rows)
    claims = robustness_claims(classes)
    gates = [evaluate_gate(Gate(**g), rows, untrusted, claims, invalid) for g in last.get("gates", [])]
    manifest = {
        "robustdistill": last["robustdistill"], "torch": last["torch"], "git": last["git"], "seed": last["seed"],
        "checkpoints": checkpoints, "started": first["started"], "finished": now(),
        "device": last.get("device"), "data": last.get("data"), "cpu": last.get("cpu"),
    }
    if "families" in last:
        manifest["families"] = last["families"]
    executors = [m.get("executor", {"name": "sequential"}) for m in manifests]
    if any("executor" in m for m in manifests):  # where each run of this audit ran its units (resumes included)
        manifest["executors"] = [e for i, e in enumerate(executors) if e not in executors[:i]]
    if missing:
        manifest["incomplete"] = missing
    manifest |= stored.evidence()
    written = family.finish(run_dir, last, finished, roles)
    report = Report(last["suite"], manifest, rows, gates, flags, run_dir, missing,
                    sections=sections(classes), written=written)
    write_json_atomic(run_dir / REPORT, report.to_dict())
    return report


def probe_classes(suite: Mapping[str, Any], rows: list[dict[str, Any]]) -> dict[str, type[Probe]]:
    """Probe name -> class for the suite's probes, in suite order, then for the derived probes whose rows the family
    added without the suite listing them (their rows carry the kind as the probe name, e.g. retention)."""
    classes: dict[str, type[Probe]] = {}
    for probe in suite.get("probes", []):
        kind = probe.get("kind")
        if isinstance(kind, str) and kind in PROBES:
            classes[probe.get("name", kind)] = PROBES.get(kind)
    for row in rows:
        name = row["probe"]
        if name not in classes and name in PROBES and PROBES.get(name).derived:
            classes[name] = PROBES.get(name)
    return classes


def robustness_claims(classes: Mapping[str, type[Probe]]) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a row claims robustness to attack (its probe says so): what a gradient-masking flag can void."""

    def claims(row: Mapping[str, Any]) -> bool:
        probe_class = classes.get(row["probe"])
        return probe_class is not None and probe_class.robustness_claim(row["metric"])

    return claims


def sections(classes: Mapping[str, type[Probe]]) -> list[dict[str, Any]]:
    """The report's sections in suite order: one per probe group, listing its probes (a derived one when the report
    has its rows)."""
    out: dict[str, dict[str, Any]] = {}
    for name, probe_class in classes.items():
        section = out.setdefault(probe_class.group, {"group": probe_class.group, "family": probe_class.family,
                                                     "probes": []})
        section["probes"].append(name)
    return list(out.values())


def one_non_finite_flag_per_model(flags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every unit of a model with NaN or infinite outputs carries the flag; the report keeps the first (plan order)."""
    seen: set[str] = set()
    out = []
    for item in flags:
        if item.get("kind") == NON_FINITE:
            if item["model"] in seen:
                continue
            seen.add(item["model"])
        out.append(item)
    return out


def evaluate_gate(gate: Gate, rows: list[dict[str, Any]], untrusted: Mapping[str, list[str]],
                  claims: Callable[[Mapping[str, Any]], bool], invalid: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """A gate's entry in report.json: its value and status. "invalid" when a model whose outputs enter the value
    gave NaN or infinite logits; "untrusted" when a model whose gradients made the adversarial examples (the gated
    one, a transfer's source, a retention's teacher) is flagged for gradient masking; else "passed", "failed" or
    "missing"."""
    if gate.is_retention:
        matches = [r for r in rows if r["probe"] == "retention" and r["model"] == gate.role
                   and r["params"].get("of") == gate.measure]
        involved = [gate.role, "teacher"]
    else:
        matches = [r for r in rows if r["probe"] == gate.probe and r["model"] == gate.role and r["metric"] == gate.measure]
        involved = [gate.role]
    row = matches[0] if len(matches) == 1 else None
    # A transfer row's adversarial examples were crafted on params.source: its gradients count too; an agreement
    # row also holds the predictions of params.with.
    source = row["params"].get("source") if row is not None else None
    if isinstance(source, str) and source not in involved:
        involved.append(source)
    other = row["params"].get("with") if row is not None else None
    measured = involved + ([other] if isinstance(other, str) else [])
    entry: dict[str, Any] = {"metric": gate.metric, "op": gate.op, "threshold": gate.threshold, "value": None,
                             "passed": False}
    void = [role for role in dict.fromkeys(measured) if role in invalid]
    if void:
        entry |= {"value": row["value"] if row is not None else None, "status": "invalid",
                  "note": f"{', '.join(void)} gave NaN or infinite outputs: the value means nothing"}
        return entry
    if row is None:
        entry |= {"status": "missing", "note": "not measured" if not matches else f"{len(matches)} rows match"}
        return entry
    value = row["value"]
    entry["value"] = value
    if value is None:
        entry |= {"status": "missing", "note": "undefined (e.g. the teacher's accuracy is 0)"}
        return entry
    ok = value >= gate.threshold if gate.op == ">=" else value <= gate.threshold
    flagged = [role for role in involved if role in untrusted]
    if flagged and claims(row):
        checks = sorted({c for role in flagged for c in untrusted[role]})
        entry |= {"status": "untrusted", "note": f"gradient masking flagged for {', '.join(flagged)} "
                  f"({', '.join(checks)}): its robust accuracy is not to be trusted"}
        return entry
    entry |= {"passed": bool(ok), "status": "passed" if ok else "failed"}
    return entry
