"""The audit runner: ``audit(suite, teacher, student, out) -> Report`` (DESIGN.md, "How data flows").

    from robustdistill import audit
    report = audit("audits/digits.toml", teacher="checkpoints/digits-standard", student=my_module, out="runs/x")
    report.passed, report.results, report.flags, report.gates

Everything the user controls (suite, checkpoints, data, models against data) is validated before the run
directory is created, so bad input leaves nothing behind. Each finished probe unit is appended to
``results.jsonl``; ``resume=True`` skips finished units, and the report is a pure function of the stored units,
so a killed and resumed audit gives the same report.json results as an uninterrupted one. The report itself
(:class:`Report`, its summary text) lives in robustdistill.audits.report, and building it from the stored units in
robustdistill.audits.build; this module validates the input, plans the probe units and runs them. It knows nothing
of images: the suite's model family (robustdistill.audits.families) loads the evaluation data, checks the models
against it, makes the run-level choices (the classifier family: which attack's examples fill the report) and gives
each unit its context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustdistill import ownership
from robustdistill.audits.build import build_report, clean_row, now, render_reports
from robustdistill.audits.families import ModelFamily, Plan, check_fit, family_of, suite_family
from robustdistill.audits.probes import EvalContext, Probe
from robustdistill.audits.report import Report
from robustdistill.audits.schema import Suite, load_suite
from robustdistill.audits.store import ARTIFACTS, REPORT, RunStore
from robustdistill.errors import UserInputError
from robustdistill.progress import WorkProgress
from robustdistill.reproducibility import cpu_record
from robustdistill.stats import pack_mask
from robustdistill.utils import resolve_device, seed_everything

log = logging.getLogger(__name__)

IN_MEMORY = "in-memory"

UnitCallback = Callable[[dict[str, Any]], None]
LoadOptions = Mapping[str, Mapping[str, Any]]  # role (or "*") -> load_model keywords


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


def _in_memory(value: Any) -> bool:
    """A model object given in memory: an nn.Module, or a model some family recognises (a LanguageModel)."""
    return isinstance(value, nn.Module) or (value is not None and not isinstance(value, (str, Path))
                                            and family_of(value) is not None)


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
        if isinstance(model, nn.Module):
            model.eval()
        models[role] = model
        checkpoints[role] = {"path": str(path), "sha256": checkpoint_sha256(path)}
    return models, checkpoints


def plan_units(suite: Suite, checkpoints: Mapping[str, Mapping[str, Any]], fingerprint: str, family: ModelFamily,
               plan: Plan) -> list[PlannedUnit]:
    units = []
    for probe in suite.probes:
        for roles in probe.units(suite.roles):
            model_sha = "+".join(checkpoints[r]["sha256"] for r in roles)
            identity = {"kind": probe.kind, "name": probe.name, "params": probe.params(), "roles": list(roles),
                        "data": fingerprint, "seed": suite.seed, "batch_size": suite.batch_size,
                        **family.unit_identity(probe, plan)}
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
    overwrite: bool = False,
    threads: int | None = None,
    executor: Any = None,
    address: str | None = None,
) -> Report:
    """Run an audit suite and return its :class:`Report`; writes ``out`` (default ``runs/<suite name>``).

    ``teacher``/``student`` (and ``models``, extra roles) are checkpoint paths or in-memory nn.Modules; they
    replace the suite's ``[pipeline]``. ``samples``/``device`` override the suite's. ``resume`` continues an
    interrupted run of the same checkpoints in ``out`` (other checkpoints there are refused); ``overwrite``
    replaces an earlier audit in ``out`` (only the files robustdistill wrote are removed, once the new run is
    validated); with neither, an ``out`` holding results is refused. ``progress``: a bar weighted by each unit's
    expected work (None: a bar on a terminal, else a log line per unit and a heartbeat every 10 s; False: none).
    ``on_unit`` is called with each unit's record after it is stored. ``load_options``: what :func:`load_models`
    passes to ``load_model`` for bare state dicts (arch, num_classes, input_shape). ``threads``: torch's CPU
    threads (default robustdistill.threads: 1 unless $ROBUSTDISTILL_THREADS or $OMP_NUM_THREADS say otherwise).
    ``executor``: None or "sequential" runs the units here, one after another; "ray" runs each as a Ray task on a
    local Ray instance or the cluster at ``address`` (robustdistill.audits.executors), with the same results; a
    :class:`~robustdistill.audits.executors.RayExecutor` already entered is shared (a sweep's audits).
    Raises :class:`UserInputError` (nothing written) for bad input.
    """
    from robustdistill.threads import apply_thread_default

    apply_thread_default(threads)  # as the CLI: on torch's one thread per core an audit took 196 s, not 50 s
    if resume and overwrite:
        raise UserInputError("overwrite", "cannot be combined with resume", "choose one: resume=True continues the "
                             "audit in out, overwrite=True replaces it")
    given = {"teacher": teacher, "student": student, **dict(models or {})}
    modules = {role: m for role, m in given.items() if _in_memory(m)}
    for role, value in given.items():
        if value is not None and not isinstance(value, (str, Path)) and not _in_memory(value):
            raise UserInputError(role, f"must be a checkpoint path or a model object (an nn.Module, a LanguageModel), "
                                 f"got {type(value).__name__}", "pass a path, or the model object itself")
    paths = {role: (f"{IN_MEMORY}:{type(m).__name__}" if role in modules else str(m))
             for role, m in given.items() if m is not None}
    extra = {role: p for role, p in paths.items() if role not in ("teacher", "student")}
    suite = load_suite(suite, teacher=paths.get("teacher"), student=paths.get("student"), samples=samples,
                       device=device, extra=extra)
    run_dir = Path(out) if out is not None else Path("runs") / suite.name
    store = RunStore(run_dir)
    # Before any work: a folder robustdistill did not make, a file, or a place that cannot be written is refused.
    ownership.claim_out(run_dir, ownership.AUDIT, legacy=ownership.is_legacy_audit)
    ownership.refuse_if_held(run_dir)
    if store.has_results() and not resume and not overwrite:
        raise _holds_results(run_dir)

    from robustdistill.audits.executors import make_executor

    runs_elsewhere = make_executor(executor, address) if isinstance(executor, str) or executor is None else executor
    train_missing(suite, modules)
    training = {role: m.training for role, m in modules.items()}
    try:
        if runs_elsewhere is None:
            return _run(suite, modules, run_dir, store, resume, progress, render, on_unit, load_options, overwrite)
        with runs_elsewhere:
            return _run(suite, modules, run_dir, store, resume, progress, render, on_unit, load_options, overwrite,
                        runs_elsewhere)
    finally:
        for role, module in modules.items():
            module.train(training[role])


def train_missing(suite: Suite, modules: Mapping[str, Any]) -> list[str]:
    """``[pipeline] recipes``: each model missing at its path is trained there first, in the table's order, and the
    roles trained are returned. Every such recipe is read and checked before the first one trains; an interrupted
    training continues from its ``.partial`` folder on the next audit, as ``train --resume`` would."""
    from robustdistill.trainers import from_recipe

    missing = {role: recipe for role, recipe in suite.pipeline.recipes.items()
               if role not in modules and suite.pipeline.path(role) and not Path(str(suite.pipeline.path(role))).exists()}
    # Every recipe read and checked first: a typo in the last one fails now, not after the others have trained.
    trainers = {role: from_recipe(recipe, field=f"pipeline.recipes.{role}") for role, recipe in missing.items()}
    for role, trainer in trainers.items():
        path = str(suite.pipeline.path(role))
        log.info("%s: %s is missing, training it from %s", role, path, missing[role])
        trainer.fit(path, resume=True)
    return list(missing)


@dataclass
class Prepared:
    """An audit made ready to run: its family, its loaded models and their checkpoint records, the evaluation data,
    the family's plan and the planned units. The driver prepares it to validate and plan the run; a Ray worker
    prepares it again (robustdistill.audits.executors) to run units, and must arrive at the same unit keys."""

    family: ModelFamily
    models: dict[str, Any]
    checkpoints: dict[str, dict[str, Any]]
    families: Any
    data: Any
    plan: Plan
    units: list[PlannedUnit]

    def context(self, suite: Suite, artifacts: Path) -> EvalContext:
        ctx = self.family.context(self.data, self.models, suite, artifacts, self.plan)
        ctx.model_sha256 = {role: entry["sha256"] for role, entry in self.checkpoints.items()}
        return ctx


def prepare(suite: Suite, modules: Mapping[str, Any], load_options: LoadOptions | None = None,
            before_checks: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> Prepared:
    """Load the models and the data, check every probe against them and plan the units (raises
    :class:`UserInputError` for bad input; writes nothing). ``before_checks`` sees the checkpoint records first."""
    family = suite_family(suite)
    device = resolve_device(suite.device)
    models, checkpoints = load_models(suite, modules, device, load_options)
    for module in modules.values():
        module.eval()
    if before_checks is not None:
        before_checks(checkpoints)
    families = check_fit(suite, family, models, checkpoints)
    data = family.load_data(suite)
    family.check_models(models, data, suite)
    for probe in suite.probes:
        audited = {role: models[role] for role in probe.audited(list(models))}
        probe.check_models(audited, checkpoints)
        probe.check_data(audited, data)
    plan = family.plan(suite, data)
    units = plan_units(suite, checkpoints, data.fingerprint, family, plan)
    return Prepared(family, models, checkpoints, families, data, plan, units)


def _run(suite: Suite, modules: Mapping[str, nn.Module], run_dir: Path, store: RunStore, resume: bool,
         progress: bool | None, render: bool, on_unit: UnitCallback | None,
         load_options: LoadOptions | None = None, overwrite: bool = False, executor: Any = None) -> Report:
    from robustdistill import __version__

    def same_checkpoints(checkpoints: dict[str, dict[str, Any]]) -> None:
        if resume and store.has_results():
            _check_same_checkpoints(run_dir, store, checkpoints)

    prepared = prepare(suite, modules, load_options, before_checks=same_checkpoints)
    checkpoints, data, family, plan, units = (prepared.checkpoints, prepared.data, prepared.family, prepared.plan,
                                              prepared.units)
    manifest = {
        "robustdistill": __version__, "torch": torch.__version__, "git": git_revision(), "seed": suite.seed,
        "checkpoints": checkpoints, "started": now(), "device": str(resolve_device(suite.device)),
        "cpu": cpu_record(),
        "data": {"kind": suite.data.kind, "split": suite.split, "n": len(data), "fingerprint": data.fingerprint},
        "suite": suite.to_dict(), "gates": [asdict(g) for g in suite.gates], **plan.manifest,
        "plan": [u.plan_entry() for u in units], "family": family.name, "families": prepared.families,
    }
    if executor is not None:
        manifest["executor"] = executor.describe()
    # Everything is validated: from here on the run directory exists, locked by this run until it returns.
    with ownership.using(run_dir, ownership.AUDIT, f"robustdistill audit {suite.name}", legacy=ownership.is_legacy_audit):
        if overwrite and store.has_results():
            removed = ownership.remove_owned(run_dir)  # only what the marker lists: a user's files there stay
            log.info("overwriting %s: removed the %d files of the earlier audit", run_dir, len(removed))
        # The units run here on this context, or on the executor's workers, which prepare their own from the job.
        ctx = prepared.context(suite, run_dir / ARTIFACTS) if executor is None else None
        job = None if executor is None else executor.job(suite, modules, load_options, run_dir / ARTIFACTS, units)
        return _execute(suite, run_dir, store, resume, progress, render, on_unit, manifest, units, ctx, executor, job)


def _holds_results(run_dir: Path) -> UserInputError:
    return UserInputError("out", f"{run_dir} already holds an audit's results",
                          "add --resume (resume=True) to continue it, --overwrite (overwrite=True) to replace it, "
                          "or choose another --out")


def _check_same_checkpoints(run_dir: Path, store: RunStore, checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
    """A resume continues the audit of the very checkpoints in ``run_dir``; others would silently start over."""
    stored = store.read()[0][-1].get("checkpoints", {})
    for role in sorted(set(stored) | set(checkpoints)):
        before, current = stored.get(role, {}).get("sha256"), checkpoints.get(role, {}).get("sha256")
        if before != current:
            was = f"sha256 {before[:12]}" if before else "no such model"
            raise UserInputError("resume", f"{run_dir} audited another {role} ({was}; this one is "
                                 f"{str(current)[:12]}): resuming would start over",
                                 "use --overwrite (overwrite=True) to replace that audit, or choose another --out")


def _execute(suite: Suite, run_dir: Path, store: RunStore, resume: bool, progress: bool | None, render: bool,
             on_unit: UnitCallback | None, manifest: dict[str, Any], units: list[PlannedUnit],
             ctx: EvalContext | None, executor: Any = None, job: Any = None) -> Report:
    """Run the planned units into the locked ``run_dir`` (here, or on ``executor`` with its ``job``) and build (and
    render) the report."""
    if store.has_results() and not resume:  # another audit finished into it while this one was validating
        raise _holds_results(run_dir)
    done: set[str] = set()
    if resume and store.has_results():
        done = set(store.read()[1])
    store.start(manifest, resume=resume)
    ownership.record(run_dir, [store.path])
    todo = [u for u in units if u.key not in done]
    if resume:
        log.info("resuming %s: %d of %d probe units already finished", run_dir, len(units) - len(todo), len(units))
    # The bar counts expected work, not units: one AutoAttack unit outweighs hundreds of clean ones.
    cost = {u.key: max(float(u.probe.expected_cost()), 0.01) for u in units}  # the probe's estimate of its work

    def keep(record: dict[str, Any]) -> None:
        store.append(record)
        ownership.record(run_dir, [run_dir / ARTIFACTS / name for name in record["artifacts"]])

    def label(unit: PlannedUnit) -> str:
        return f"{unit.probe.name} on {'+'.join(unit.roles)}"

    with WorkProgress(f"audit {suite.name}", sum(cost.values()), len(units), enabled=progress,
                      done=sum(cost[u.key] for u in units if u.key in done), done_units=len(units) - len(todo)) as bar:
        if executor is None:
            for unit in todo:
                with bar.unit(label(unit), cost[unit.key]):  # labels its log lines
                    assert ctx is not None
                    record = _run_unit(suite, unit, ctx)
                    keep(record)
                _finished(unit, record, on_unit)
        else:  # the units run elsewhere, several at once: each is stored as it comes back, in any order
            for unit, record in executor.run(job, todo):
                keep(record)
                bar.finished(label(unit), cost[unit.key])
                _finished(unit, record, on_unit)
    report = build_report(run_dir)
    ownership.record(run_dir, [run_dir / REPORT, *report.written])
    if render:
        report.rendered = render_reports(run_dir)
    return report


def _finished(unit: PlannedUnit, record: dict[str, Any], on_unit: UnitCallback | None) -> None:
    log.debug("%s on %s: %.1fs", unit.probe.name, "+".join(unit.roles), record["seconds"])
    if on_unit is not None:
        on_unit(record)


def _run_unit(suite: Suite, unit: PlannedUnit, ctx: EvalContext) -> dict[str, Any]:
    """Run one unit; its record for the store."""
    seed_everything(suite.seed)  # any global-RNG use inside a unit is the same however the run was split
    started = time.perf_counter()
    result = unit.probe.run_unit(ctx, unit.roles)  # run() plus the non_finite_outputs check
    return {
        "key": unit.key, "model_sha256": unit.model_sha256, "probe": unit.probe.name, "kind": unit.probe.kind,
        "params_hash": unit.params_hash, "roles": list(unit.roles), "params": unit.probe.params(),
        "n": ctx.n, "rows": [clean_row(r) for r in result.rows],
        "masks": {role: {k: pack_mask(v) for k, v in m.items()} for role, m in result.masks.items()},
        "flags": result.flags, "artifacts": result.artifacts,
        "seconds": round(time.perf_counter() - started, 3), "finished": now(),
    }
