"""The audit runner: ``audit(suite, teacher, student, out) -> Report`` (DESIGN.md, "How data flows").

    from robustdistill import audit
    report = audit("audits/digits.toml", teacher="checkpoints/digits-standard", student=my_module, out="runs/x")
    report.passed, report.results, report.flags, report.gates

Everything the user controls (suite, checkpoints, data, models against data) is validated before the run
directory is created, so bad input leaves nothing behind. Each finished probe unit is appended to
``results.jsonl``; ``resume=True`` skips finished units, and the report is a pure function of the stored units,
so a killed and resumed audit gives the same report.json results as an uninterrupted one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robustdistill import ownership
from robustdistill.audits import masking
from robustdistill.audits.probes import NON_FINITE, EvalContext, Probe, default_examples_probe
from robustdistill.audits.verdict import decide, flagged_checks
from robustdistill.audits.schema import Gate, Suite, load_suite
from robustdistill.audits.stats import bootstrap_ratio_ci, pack_mask, unpack_mask
from robustdistill.audits.store import REPORT, RunStore
from robustdistill.errors import UserInputError
from robustdistill.reproducibility import cpu_record
from robustdistill.utils import atomic_path, resolve_device, seed_everything, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
EXAMPLES = "examples.npz"
N_EXAMPLES = 12
IN_MEMORY = "in-memory"
ROW_KEYS = ("probe", "model", "metric", "value", "ci95", "n", "params")

UnitCallback = Callable[[dict[str, Any]], None]
LoadOptions = Mapping[str, Mapping[str, Any]]  # role (or "*") -> load_model keywords


# --------------------------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """An audit's outcome; ``to_dict()`` is report.json (DESIGN.md).

    ``verdict``: the one decision (robustdistill.audits.verdict) that the CLI, the exit code and every rendered
    report show; ``passed`` is its ``passed``: every gate passed, every planned unit finished, no model gave
    non-finite outputs and none is flagged for gradient masking (unless the suite's ``[verdict]`` opts out).
    ``results``: a DataFrame, one row per (probe, model, metric[, params]). ``flags``: gradient-masking and
    ``non_finite_outputs`` flags with evidence. ``gates``: each gate with its value, ``passed`` and ``status``
    ("passed", "failed", "untrusted", "invalid" or "missing"). ``untrusted``: the models whose robust accuracy is
    not to be trusted (flagged for gradient masking).
    """

    suite: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    run_dir: Path | None = None
    missing: list[str] = field(default_factory=list)
    rendered: list[Path] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = decide(self.gates, self.flags, self.missing, self.suite.get("verdict"),
                                  self.manifest.get("chain"))

    @property
    def passed(self) -> bool:
        return bool(self.verdict["passed"])

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def exit_code(self) -> int:
        """0 when every gate passed, 1 otherwise (DESIGN.md's exit codes of ``robustdistill audit``)."""
        return 0 if self.passed else 1

    @property
    def untrusted(self) -> list[str]:
        return sorted({f["model"] for f in self.flags if f.get("kind") == masking.KIND})

    @property
    def results(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(ROW_KEYS))

    def value(self, model: str, probe: str, metric: str, **params: Any) -> float | None:
        """The value of the single row matching (model, probe, metric) and any given params."""
        matches = [r for r in self.rows if r["model"] == model and r["probe"] == probe and r["metric"] == metric
                   and all(r["params"].get(k) == v for k, v in params.items())]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows match {model}.{probe}.{metric} {params or ''}".strip())
        return matches[0]["value"]

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "manifest": self.manifest, "results": self.rows, "gates": self.gates,
                "flags": self.flags, "verdict": self.verdict}

    def summary(self) -> str:
        """A short teacher-vs-student table, the flags, the gates and the verdict (what the CLI prints)."""
        roles = list(self.manifest.get("checkpoints", {})) or sorted({r["model"] for r in self.rows})
        lines: list[str] = []
        table: list[tuple[str, list[str]]] = []
        retention = {(r["model"], r["params"].get("of")): r for r in self.rows if r["probe"] == "retention"}
        show_retention = "student" in roles and "teacher" in roles
        for row in self.rows:
            if row["model"] != roles[0] or row["metric"] not in ("accuracy", "robust_accuracy"):
                continue
            if row["probe"] != "clean" and "attack" not in row["params"] or "check" in row["params"]:
                continue
            if row["probe"] in ("curve",):
                continue
            cells = []
            for role in roles:
                other = next((r for r in self.rows if r["model"] == role and r["probe"] == row["probe"]
                              and r["metric"] == row["metric"] and r["params"] == row["params"]), None)
                text = _pct(other["value"]) if other else "-"
                if other and role in self.untrusted and row["probe"] != "clean":
                    text += " *"
                cells.append(text)
            if show_retention:
                ret = retention.get(("student", row["probe"]))
                cells.append(_pct(ret["value"]) if ret else "-")
            label = "clean accuracy" if row["probe"] == "clean" else f"{row['probe']} robust accuracy"
            table.append((label, cells))
        header = roles + (["retention"] if show_retention else [])
        width = max([len(label) for label, _ in table] + [10])
        lines.append(f"{'':<{width}}  " + "  ".join(f"{h:>10}" for h in header))
        for label, cells in table:
            lines.append(f"{label:<{width}}  " + "  ".join(f"{c:>10}" for c in cells))
        lines.extend(self._privacy_summary(roles))
        if self.untrusted:
            lines.append("* not to be trusted: gradient masking flagged for " + ", ".join(self.untrusted))
        invalid = flagged_checks(self.flags, NON_FINITE)
        if invalid:
            lines.append("invalid: NaN or infinite outputs from " + ", ".join(invalid) + "; every gate on them fails")
        for item in self.flags:
            lines.append(f"FLAG {item['model']}: {item['check']}: {item['evidence']}")
        for gate in self.gates:
            value = "missing" if gate["value"] is None else f"{gate['value']:.4g}"
            note = f" ({gate['note']})" if gate.get("note") else ""
            lines.append(f"{gate['status'].upper():<9} {gate['metric']} {gate['op']} {gate['threshold']:g}: {value}{note}")
        if self.missing:
            lines.append(f"INCOMPLETE: {len(self.missing)} probe unit(s) did not finish; continue with --resume")
        lines += [f"warning: {note}" for note in self.verdict.get("notes", [])]
        lines.append(f"verdict: {self.verdict['summary']}")
        return "\n".join(lines)


    def _privacy_summary(self, roles: list[str]) -> list[str]:
        """Membership inference: per probe and ground truth, each model's AUC and TPR at 0.1% and 1% FPR."""
        probes = [p["name"] for p in self.suite.get("probes", []) if str(p.get("kind", "")).startswith("mia-")]
        if not probes:
            return []
        metrics = (("auc", "AUC"), ("tpr_at_0_1pct_fpr", "TPR@0.1%"), ("tpr_at_1pct_fpr", "TPR@1%"))
        table: list[tuple[str, list[str]]] = []
        for name in probes:
            for prefix, view in (("", "own members"), ("teacher_members_", "teacher's members")):
                cells = []
                for role in roles:
                    for metric, _ in metrics:
                        row = next((r for r in self.rows if r["probe"] == name and r["model"] == role
                                    and r["metric"] == prefix + metric), None)
                        if row is None:
                            cells.append("-")
                        elif row["value"] is None:
                            cells.append("n/r")
                        else:
                            cells.append(f"{row['value']:.3f}" if metric == "auc" else _pct(row["value"]))
                if any(c != "-" for c in cells):
                    table.append((f"{name} ({view})", cells))
        width = max([len(label) for label, _ in table] + [len("membership inference")])
        group = 3 * 8 + 2
        lines = [f"{'membership inference':<{width}}  " + " ".join(f"{role:^{group}}" for role in roles),
                 f"{'':<{width}}  " + " ".join(" ".join(f"{label:>8}" for _, label in metrics) for _ in roles)]
        lines += [f"{label:<{width}}  " + " ".join(" ".join(f"{c:>8}" for c in cells[i:i + 3])
                                                   for i in range(0, len(cells), 3)) for label, cells in table]
        if any("n/r" in cells for _, cells in table):
            lines.append("n/r: not resolvable (too few non-members for that false-positive rate)")
        return lines


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# --------------------------------------------------------------------------------------------------------------
# Preparing a run: everything validated before the run directory exists


@dataclass(frozen=True)
class PlannedUnit:
    probe: Probe
    roles: tuple[str, ...]
    key: str
    model_sha256: str
    params_hash: str

    def plan_entry(self) -> dict[str, Any]:
        return {"key": self.key, "probe": self.probe.name, "kind": self.probe.kind, "roles": list(self.roles)}


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 of an in-memory model's state_dict (names, dtypes, shapes and values, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        array = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(array.dtype).encode())
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


def git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_models(suite: Suite, modules: Mapping[str, nn.Module], device: torch.device,
                load_options: LoadOptions | None = None) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """Load every role's model. ``load_options`` (role -> load_model keywords such as arch, num_classes,
    input_shape; role "*": every model given as a file, i.e. a bare state dict) says what a state dict cannot."""
    from robustdistill.models import checkpoint_sha256, load_model

    options = dict(load_options or {})
    unknown = sorted(set(options) - {"*", *suite.roles})
    if unknown:
        raise UserInputError("load_options", f"no model with role {unknown[0]!r} in the suite",
                             f"use one of {', '.join(suite.roles)} (ROLE= in --arch, --num-classes, --input-shape)")

    models: dict[str, nn.Module] = {}
    checkpoints: dict[str, dict[str, Any]] = {}
    for role in suite.roles:
        where = f"pipeline.{role}" if role in ("teacher", "student") else f"pipeline.extra.{role}"
        module = modules.get(role)
        if module is not None:
            models[role] = module
            checkpoints[role] = {"path": None, "sha256": state_dict_sha256(module), "source": IN_MEMORY,
                                 "class": type(module).__name__}
            continue
        path = getattr(suite.pipeline, role, None) if role in ("teacher", "student") else suite.pipeline.extra[role]
        if not path or path.startswith(IN_MEMORY):
            flag = f"--{role}" if role in ("teacher", "student") else f"models={{'{role}': ...}}"
            raise UserInputError(where, "no model given", f"set it in the suite's [pipeline] or pass {flag}")
        try:
            keywords = {**(options.get("*", {}) if Path(path).is_file() else {}), **options.get(role, {})}
            model = load_model(path, device=device, **keywords)
        except UserInputError as exc:
            raise UserInputError(where, f"{path}: {exc.problem}", exc.fix) from None
        if not isinstance(model, nn.Module):
            raise UserInputError(where, f"{path} is a {type(model).__name__}, not an image classifier",
                                 "this suite's probes attack image classifiers")
        model.eval()
        models[role] = model
        checkpoints[role] = {"path": str(path), "sha256": checkpoint_sha256(path)}
    return models, checkpoints


def check_compatible(models: Mapping[str, nn.Module], x: torch.Tensor, num_classes: int, data_kind: str) -> None:
    """One forward pass per model on two evaluation points: right input shape, one logit per class."""
    from robustdistill.audits.probes import model_device

    sample = x[:2]
    for role, model in models.items():
        where = f"pipeline.{role}" if role in ("teacher", "student") else f"pipeline.extra.{role}"
        try:
            with torch.no_grad():
                logits = model(sample.to(model_device(model)))
        except Exception as exc:  # the user's model on the user's data: report it, do not dump a traceback
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(where, f"cannot run on the {data_kind} data (inputs {tuple(sample.shape[1:])}): {message}",
                                 "audit the model with the data it was trained on") from None
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != sample.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise UserInputError(where, f"returns {shape} for a batch of {sample.shape[0]}, not (batch, classes) logits",
                                 "wrap the model so that forward returns logits")
        if logits.shape[1] != num_classes:
            raise UserInputError(where, f"has {logits.shape[1]} outputs but the {data_kind} data has {num_classes} classes",
                                 "audit the model with the data it was trained on")


def plan_units(suite: Suite, checkpoints: Mapping[str, Mapping[str, Any]], fingerprint: str, examples: str | None) -> list[PlannedUnit]:
    units = []
    for probe in suite.probes:
        for roles in probe.units(suite.roles):
            model_sha = "+".join(checkpoints[r]["sha256"] for r in roles)
            identity = {"kind": probe.kind, "name": probe.name, "params": probe.params(), "roles": list(roles),
                        "data": fingerprint, "seed": suite.seed, "batch_size": suite.batch_size,
                        "examples": probe.name == examples}
            params_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            units.append(PlannedUnit(probe, roles, f"{model_sha}:{probe.name}:{params_hash}", model_sha, params_hash))
    return units


# --------------------------------------------------------------------------------------------------------------
# audit()


def audit(
    suite: str | Path | Mapping[str, Any] | Suite,
    teacher: str | Path | nn.Module | None = None,
    student: str | Path | nn.Module | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    *,
    models: Mapping[str, str | Path | nn.Module] | None = None,
    samples: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    render: bool = True,
    on_unit: UnitCallback | None = None,
    load_options: LoadOptions | None = None,
) -> Report:
    """Run an audit suite and return its :class:`Report`; writes ``out`` (default ``runs/<suite name>``).

    ``teacher``/``student`` (and ``models``, extra roles) are checkpoint paths or in-memory nn.Modules; they
    replace the suite's ``[pipeline]``. ``samples``/``device`` override the suite's. ``resume`` continues an
    interrupted run in ``out``; without it an ``out`` holding results is refused. ``progress``: tqdm bars (None:
    only on a terminal). ``on_unit`` is called with each unit's record after it is stored. ``load_options``: what
    :func:`load_models` passes to ``load_model`` for bare state dicts (arch, num_classes, input_shape).
    Raises :class:`UserInputError` (nothing written) for bad input.
    """
    given = {"teacher": teacher, "student": student, **dict(models or {})}
    modules = {role: m for role, m in given.items() if isinstance(m, nn.Module)}
    for role, value in given.items():
        if value is not None and not isinstance(value, (str, Path, nn.Module)):
            raise UserInputError(role, f"must be a checkpoint path or an nn.Module, got {type(value).__name__}",
                                 "pass a path, or the model object itself")
    paths = {role: (f"{IN_MEMORY}:{type(m).__name__}" if isinstance(m, nn.Module) else str(m))
             for role, m in given.items() if m is not None}
    extra = {role: p for role, p in paths.items() if role not in ("teacher", "student")}
    suite = load_suite(suite, teacher=paths.get("teacher"), student=paths.get("student"), samples=samples,
                       device=device, extra=extra)
    run_dir = Path(out) if out is not None else Path("runs") / suite.name
    store = RunStore(run_dir)
    # Before any work: a folder robustdistill did not make, a file, or a place that cannot be written is refused.
    ownership.claim_out(run_dir, ownership.AUDIT, legacy=ownership.is_legacy_audit)
    ownership.refuse_if_held(run_dir)
    if store.has_results() and not resume:
        raise UserInputError("out", f"{run_dir} already holds an audit's results",
                             "add --resume (resume=True) to continue it, or choose another --out")

    training = {role: m.training for role, m in modules.items()}
    try:
        return _run(suite, modules, run_dir, store, resume, progress, render, on_unit, load_options)
    finally:
        for role, module in modules.items():
            module.train(training[role])


def _run(suite: Suite, modules: Mapping[str, nn.Module], run_dir: Path, store: RunStore, resume: bool,
         progress: bool | None, render: bool, on_unit: UnitCallback | None,
         load_options: LoadOptions | None = None) -> Report:
    from robustdistill import __version__
    from robustdistill.data import load_split

    device = resolve_device(suite.device)
    models, checkpoints = load_models(suite, modules, device, load_options)
    for module in modules.values():
        module.eval()
    data = load_split(suite.data, suite.split).subset(suite.samples, seed=suite.seed)
    check_compatible(models, data.x, data.num_classes, suite.data.kind)
    for probe in suite.probes:
        probe.check_models(models, checkpoints)
    examples = suite.examples or default_examples_probe(suite.probes)
    units = plan_units(suite, checkpoints, data.fingerprint, examples)
    rng = np.random.default_rng(suite.seed)
    example_idx = np.sort(rng.choice(len(data), size=min(N_EXAMPLES, len(data)), replace=False))

    manifest = {
        "robustdistill": __version__, "torch": torch.__version__, "git": git_revision(), "seed": suite.seed,
        "checkpoints": checkpoints, "started": now(), "device": str(device), "cpu": cpu_record(),
        "data": {"kind": suite.data.kind, "split": suite.split, "n": len(data), "fingerprint": data.fingerprint},
        "suite": suite.to_dict(), "gates": [asdict(g) for g in suite.gates], "examples": examples,
        "plan": [u.plan_entry() for u in units],
    }
    # Everything is validated: from here on the run directory exists, locked by this run until it returns.
    with ownership.using(run_dir, ownership.AUDIT, f"robustdistill audit {suite.name}", legacy=ownership.is_legacy_audit):
        return _execute(suite, run_dir, store, resume, progress, render, on_unit, manifest, units, data, models,
                        examples, example_idx)


def _execute(suite: Suite, run_dir: Path, store: RunStore, resume: bool, progress: bool | None, render: bool,
             on_unit: UnitCallback | None, manifest: dict[str, Any], units: list[PlannedUnit], data: Any,
             models: Mapping[str, nn.Module], examples: str | None, example_idx: np.ndarray) -> Report:
    """Run the planned units into the locked ``run_dir`` and build (and render) the report."""
    if store.has_results() and not resume:  # another audit finished into it while this one was validating
        raise UserInputError("out", f"{run_dir} already holds an audit's results",
                             "add --resume (resume=True) to continue it, or choose another --out")
    done: set[str] = set()
    if resume and store.has_results():
        done = set(store.read()[1])
    store.start(manifest, resume=resume)
    ownership.record(run_dir, [store.path])
    ctx = EvalContext(data.x, data.y, models, suite.seed, suite.batch_size, artifacts=run_dir / ARTIFACTS,
                      example_idx=example_idx, examples_probe=examples)
    todo = [u for u in units if u.key not in done]
    if resume:
        log.info("resuming %s: %d of %d probe units already finished", run_dir, len(units) - len(todo), len(units))
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=f"audit {suite.name}", unit="probe",
               disable=None if progress is None else not progress, leave=False)
    try:
        for unit in todo:
            bar.set_postfix_str(f"{unit.probe.name} on {'+'.join(unit.roles)}")
            seed_everything(suite.seed)  # any global-RNG use inside a unit is the same however the run was split
            started = time.perf_counter()
            result = unit.probe.run_unit(ctx, unit.roles)  # run() plus the non_finite_outputs check
            record = {
                "key": unit.key, "model_sha256": unit.model_sha256, "probe": unit.probe.name, "kind": unit.probe.kind,
                "params_hash": unit.params_hash, "roles": list(unit.roles), "params": unit.probe.params(),
                "n": ctx.n, "rows": [clean_row(r) for r in result.rows],
                "masks": {role: {k: pack_mask(v) for k, v in m.items()} for role, m in result.masks.items()},
                "flags": result.flags, "artifacts": result.artifacts,
                "seconds": round(time.perf_counter() - started, 3), "finished": now(),
            }
            store.append(record)
            ownership.record(run_dir, [run_dir / ARTIFACTS / name for name in record["artifacts"]])
            log.debug("%s on %s: %.1fs", unit.probe.name, "+".join(unit.roles), record["seconds"])
            bar.update(1)
            if on_unit is not None:
                on_unit(record)
    finally:
        bar.close()
    report = build_report(run_dir)
    ownership.record(run_dir, [p for p in (run_dir / REPORT, run_dir / ARTIFACTS / EXAMPLES) if p.is_file()])
    if render:
        report.rendered = render_reports(run_dir)
    return report


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


# --------------------------------------------------------------------------------------------------------------
# Building the report from results.jsonl


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
