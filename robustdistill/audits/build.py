"""Building the report from the run store: ``build_report(run_dir) -> Report``, and rendering it.

``build_report`` is a pure function of the stored units in results.jsonl (so a resumed audit gives the same
results as an uninterrupted one): it collects each planned unit's rows and flags, adds the retention rows
(``retention_rows``, paired-bootstrap CIs), runs the cross-unit gradient-masking checks, keeps one
non-finite-outputs flag per model, evaluates every gate (``evaluate_gate``), merges the per-role example arrays
into artifacts/examples.npz (``merge_examples``) and writes report.json. ``clean_row`` gives a unit's rows exactly
the report.json keys; ``render_reports`` writes report.md / report.html through robustdistill.reports.
"""

from __future__ import annotations

import datetime as dt
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.audits import masking
from robustdistill.audits.probes import NON_FINITE
from robustdistill.audits.report import ROW_KEYS, Report
from robustdistill.audits.schema import Gate
from robustdistill.audits.store import REPORT, RunStore
from robustdistill.audits.verdict import flagged_checks
from robustdistill.errors import UserInputError
from robustdistill.stats import bootstrap_ratio_ci, unpack_mask
from robustdistill.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
EXAMPLES = "examples.npz"


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
    rows: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    missing: list[str] = []
    attacks: dict[str, list[masking.AttackResult]] = {}
    curves: dict[str, list[tuple[str, list[tuple[float, np.ndarray]]]]] = {}
    correct: dict[tuple[str, str], np.ndarray] = {}  # (role, probe) -> per-point correct (clean or robust)
    retainable: list[tuple[str, str, dict[str, Any]]] = []  # (probe name, kind, params) in plan order
    for entry in last["plan"]:
        record = units.get(entry["key"])
        if record is None:
            missing.append(f"{entry['probe']} on {'+'.join(entry['roles'])}")
            continue
        rows.extend(record["rows"])
        flags.extend(record.get("flags", []))
        n = int(record["n"])
        masks = {role: {k: unpack_mask(v, n) for k, v in m.items()} for role, m in record.get("masks", {}).items()}
        params = record.get("params", {})
        kind, name = record["kind"], record["probe"]
        if kind in ("clean", "attack") and (name, kind, params) not in retainable:
            retainable.append((name, kind, params))
        for role, m in masks.items():
            if kind == "clean":
                correct[(role, name)] = m["correct"]
            elif kind == "attack":
                correct[(role, name)] = m["robust"]
                attack = params.get("attack", name)
                loss = "ce" if attack in ("fgsm", "pgd", "apgd-ce") and params.get("loss", "ce") == "ce" else "other"
                eps = params.get("eps")
                attacks.setdefault(role, []).append(masking.AttackResult(
                    name, attack, float(eps) if isinstance(eps, (int, float)) else None, params.get("norm", "linf"),
                    loss, m["robust"], m["clean"], m))
            elif kind == "curve":
                points = [(float(k.split("@", 1)[1]), v) for k, v in m.items() if k.startswith("robust@")]
                curves.setdefault(role, []).append((name, points))
    checkpoints = last.get("checkpoints", {})
    roles = list(checkpoints)
    rows.extend(retention_rows(last, roles, retainable, correct, int(last["seed"])))
    settings = next((p for p in last["suite"].get("probes", []) if p.get("kind") == "masking"), {})
    tolerances = {"tolerance": settings.get("tolerance", masking.TOLERANCE),
                  "loss_tolerance": settings.get("loss_tolerance", masking.LOSS_TOLERANCE)}
    for role in roles:
        flags.extend(masking.cross_checks(role, attacks.get(role, []), curves.get(role, []), **tolerances))
    flags = one_non_finite_flag_per_model(masking.dedupe(flags))
    invalid = set(flagged_checks(flags, NON_FINITE))
    untrusted = {f["model"]: [] for f in flags if f.get("kind") == masking.KIND}
    for item in flags:
        if item["model"] in untrusted:
            untrusted[item["model"]].append(item["check"])
    # Gradient masking makes robust accuracy untrustworthy; it says nothing about membership leakage or model size.
    not_robustness = {p["name"] for p in last["suite"].get("probes", [])
                      if str(p.get("kind", "")).startswith("mia-") or p.get("kind") == "size"}
    gates = [evaluate_gate(Gate(**g), rows, untrusted, not_robustness, invalid) for g in last.get("gates", [])]
    manifest = {
        "robustdistill": last["robustdistill"], "torch": last["torch"], "git": last["git"], "seed": last["seed"],
        "checkpoints": checkpoints, "started": first["started"], "finished": now(),
        "device": last.get("device"), "data": last.get("data"), "cpu": last.get("cpu"),
    }
    if missing:
        manifest["incomplete"] = missing
    manifest |= stored.evidence()
    report = Report(last["suite"], manifest, rows, gates, flags, run_dir, missing)
    merge_examples(run_dir, last, units, roles)
    write_json_atomic(run_dir / REPORT, report.to_dict())
    return report


def retention_rows(manifest: Mapping[str, Any], roles: list[str], retainable: list[tuple[str, str, dict[str, Any]]],
                   correct: Mapping[tuple[str, str], np.ndarray], seed: int) -> list[dict[str, Any]]:
    """Student (and extra model) accuracy / teacher accuracy per clean and attack probe, paired-bootstrap CI."""
    only: set[str] | None = None
    for probe in manifest.get("suite", {}).get("probes", []):
        if probe.get("kind") == "retention" and probe.get("of"):
            only = set(probe["of"])
    rows = []
    for role in roles:
        if role == "teacher":
            continue
        for name, kind, params in retainable:
            if only is not None and name not in only:
                continue
            teacher, other = correct.get(("teacher", name)), correct.get((role, name))
            if teacher is None or other is None:
                continue
            metric = "accuracy_retention" if kind == "clean" else "robust_accuracy_retention"
            value = float(other.mean() / teacher.mean()) if teacher.any() else None
            row_params = {"of": name, "with": "teacher"}
            if kind == "attack":
                row_params |= {"attack": params.get("attack"), "eps": params.get("eps")}
            rows.append({"probe": "retention", "model": role, "metric": metric, "value": value,
                         "ci95": bootstrap_ratio_ci(other.astype(float), teacher.astype(float), seed=seed),
                         "n": int(teacher.size), "params": row_params})
    return rows


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


CLEAN_METRICS = frozenset({"accuracy", "agreement_clean", "accuracy_retention"})


def evaluate_gate(gate: Gate, rows: list[dict[str, Any]], untrusted: Mapping[str, list[str]],
                  not_robustness: frozenset[str] | set[str] = frozenset(),
                  invalid: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
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
    robust = row["metric"] not in CLEAN_METRICS and row["probe"] not in not_robustness
    flagged = [role for role in involved if role in untrusted]
    if robust and flagged:
        checks = sorted({c for role in flagged for c in untrusted[role]})
        entry |= {"status": "untrusted", "note": f"gradient masking flagged for {', '.join(flagged)} "
                  f"({', '.join(checks)}): its robust accuracy is not to be trusted"}
        return entry
    entry |= {"passed": bool(ok), "status": "passed" if ok else "failed"}
    return entry


def merge_examples(run_dir: Path, manifest: Mapping[str, Any], units: Mapping[str, Mapping[str, Any]], roles: list[str]) -> None:
    """artifacts/examples.npz for the renderer: clean, labels, attack, and adv_/pred_clean_/pred_adv_<role>."""
    name = manifest.get("examples")
    if not name:
        return
    files: dict[str, Path] = {}
    for entry in manifest["plan"]:
        record = units.get(entry["key"])
        if entry["probe"] != name or record is None:
            continue
        for artifact in record.get("artifacts", []):
            role = entry["roles"][0]
            files[role] = run_dir / ARTIFACTS / artifact
    if set(files) != set(roles) or not all(p.is_file() for p in files.values()):
        return
    inside = (run_dir / ARTIFACTS).resolve()
    for path in files.values():  # the store checked the names; a symbolic link could still lead elsewhere
        if not path.resolve().is_relative_to(inside):
            raise UserInputError(str(path), f"leads outside {inside}", "a run reads only its own files; re-run the "
                                 "audit into a new --out")
    arrays: dict[str, np.ndarray] = {}
    try:
        for role in roles:
            with np.load(files[role], allow_pickle=False) as part:
                if "clean" not in arrays:
                    arrays |= {"clean": part["clean"], "labels": part["labels"], "index": part["index"],
                               "attack": np.array(name)}
                arrays[f"adv_{role}"] = part["adv"]
                arrays[f"pred_clean_{role}"] = part["pred_clean"]
                arrays[f"pred_adv_{role}"] = part["pred_adv"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # damaged examples cost the examples only
        log.warning("cannot merge the examples of %s (%s: %s): the report shows none", name, type(exc).__name__, exc)
        return
    with atomic_path(run_dir / ARTIFACTS / EXAMPLES) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
