"""``robustdistill sweep SWEEP.toml``: many audits in one go, each in its own run directory, and one index.html
comparing them.

A sweep file lists (teacher, student, suite) entries, or audits every checkpoint a glob matches against one teacher,
or both::

    name = "digits-sweep"
    suite = "audits/demo-quick.toml"            # every entry's suite, unless it names its own

    [[audits]]
    name = "kd"                                 # its run directory: <out>/kd (default: the student's folder name)
    teacher = "checkpoints/digits-standard"
    student = "checkpoints/digits-kd"

    [glob]
    teacher = "checkpoints/digits-standard"
    students = "checkpoints/sweep/*"            # every checkpoint it matches, in name order

Each audit is an ordinary audit (the same run store, the same keys), so a sweep interrupted or run again resumes
every audit of the same checkpoints where it stopped and starts over an audit whose checkpoints changed. Relative
paths resolve as a suite's do (the working directory, else the sweep file's folder, else its parent).

The audits run here one after another, or with ``executor="ray"`` (``--executor ray``) side by side, each unit a Ray
task (robustdistill.audits.executors); the results are the same.
"""

from __future__ import annotations

import glob as globbing
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from robustdistill import ownership
from robustdistill.audits.schema import Strict, read_toml, resolve_path, user_error
from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

KIND = "sweep"
INDEX = "index.html"
MAX_AUDITS = 10_000
SIDE_BY_SIDE = 8  # audits a Ray sweep prepares and runs at once (each holds its models and data in this process)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SweepAudit(Strict):
    name: str | None = None
    teacher: str = Field(min_length=1)
    student: str = Field(min_length=1)
    suite: str | None = None
    teacher_recipe: str | None = None  # trains the teacher there first when it is missing
    student_recipe: str | None = None


class SweepGlob(Strict):
    teacher: str = Field(min_length=1)
    students: str = Field(min_length=1)
    suite: str | None = None


class SweepFile(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    suite: str | None = None
    audits: list[SweepAudit] = Field(default_factory=list, max_length=MAX_AUDITS)
    glob: SweepGlob | None = None


@dataclass(frozen=True)
class SweepEntry:
    """One audit of the sweep: its run directory's name, its models, its suite, and the recipes that train a
    missing model first."""

    name: str
    teacher: str
    student: str
    suite: str
    teacher_recipe: str | None = None
    student_recipe: str | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    entries: tuple[SweepEntry, ...]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every entry has a suite that exists, models that exist, and a distinct name."""
    path = Path(path)
    try:
        raw = SweepFile.model_validate(read_toml(path, "SWEEP.toml"))
    except ValidationError as exc:
        raise user_error(exc, "sweep", SweepFile) from None
    entries: list[SweepEntry] = []

    def suite_of(own: str | None, where: str) -> str:
        suite = own or raw.suite
        if suite is None:
            raise UserInputError(f"{where}.suite", "no suite for this audit",
                                 "set suite = 'audits/...toml' at the top of the sweep file, or in the entry")
        resolved = resolve_path(suite, path)
        if not Path(resolved).is_file():
            raise UserInputError(f"{where}.suite", f"file not found: {suite}", "check the path")
        return resolved

    # Models an entry's recipe trains: any entry may name them, since every one is trained before the first audit.
    planned = {resolve_path(getattr(item, role), path) for item in raw.audits for role in ("teacher", "student")
               if getattr(item, f"{role}_recipe") is not None}

    def model(value: str, where: str, recipe: str | None = None) -> str:
        resolved = resolve_path(value, path)
        if recipe is not None:
            if not Path(resolve_path(recipe, path)).is_file():
                raise UserInputError(f"{where}_recipe", f"file not found: {recipe}", "check the path")
        elif not Path(resolved).exists() and resolved not in planned:
            raise UserInputError(where, f"no checkpoint at {value}",
                                 f"train it first, fix the path, or set {where.rsplit('.', 1)[-1]}_recipe")
        return resolved

    for i, item in enumerate(raw.audits):
        where = f"audits[{i}]"
        student = model(item.student, f"{where}.student", item.student_recipe)
        teacher = model(item.teacher, f"{where}.teacher", item.teacher_recipe)
        recipes = [resolve_path(r, path) if r else None for r in (item.teacher_recipe, item.student_recipe)]
        entries.append(SweepEntry(item.name or Path(student).name, teacher, student, suite_of(item.suite, where),
                                  *recipes))
    if raw.glob is not None:
        teacher = model(raw.glob.teacher, "glob.teacher")
        pattern = raw.glob.students
        base = pattern if Path(pattern).is_absolute() else resolve_glob_base(pattern, path)
        matched = sorted(p for p in globbing.glob(base) if Path(p).resolve() != Path(teacher).resolve())
        if not matched:
            raise UserInputError("glob.students", f"{pattern!r} matches no checkpoint", "check the pattern")
        suite = suite_of(raw.glob.suite, "glob")
        entries += [SweepEntry(Path(p).name, teacher, p, suite) for p in matched]
    if not entries:
        raise UserInputError("audits", "the sweep has no audits", "add [[audits]] entries or a [glob]")
    if len(entries) > MAX_AUDITS:
        raise UserInputError("glob.students", f"{len(entries)} audits, more than {MAX_AUDITS}", "narrow the pattern")
    seen: dict[str, SweepEntry] = {}
    for entry in entries:
        if not NAME.match(entry.name):
            raise UserInputError("audits.name", f"{entry.name!r} cannot name a run directory",
                                 "use letters, digits, '.', '_' and '-'")
        if entry.name in seen:
            raise UserInputError("audits.name", f"two audits are named {entry.name!r}",
                                 "give the entries distinct names (name = ...)")
        seen[entry.name] = entry
    return Sweep(raw.name, raw.description, tuple(entries))


def resolve_glob_base(pattern: str, sweep_file: Path) -> str:
    """A relative pattern against the working directory when it matches there, else the sweep file's folder."""
    if globbing.glob(pattern):
        return pattern
    return str(sweep_file.parent / pattern)


def run_sweep(path: str | Path, out: str | Path | None = None, *, device: str | None = None,
              progress: bool | None = None, executor: Any = None, address: str | None = None
              ) -> tuple[Sweep, list[Any], Path]:
    """Run every audit of the sweep file into ``out`` (default runs/<sweep name>) and write ``out``/index.html;
    returns (the sweep, the reports in entry order, the index's path). Every missing model an entry's recipe
    trains is trained first, in entry order. ``executor``: None runs the audits here one after another; "ray"
    runs every audit's units as Ray tasks (a local instance, or the cluster at ``address``), the audits side by
    side, with the same results (robustdistill.audits.executors)."""
    from robustdistill.audits.executors import make_executor
    from robustdistill.reports import index_entry, render_sweep_index

    sweep = load_sweep(path)
    runner = make_executor(executor, address)
    out = Path(out) if out is not None else Path("runs") / sweep.name
    # Before any audit: the folder and every run directory in it are new, empty or robustdistill's own.
    ownership.claim_out(out, KIND)
    for entry in sweep.entries:
        ownership.claim_out(out / entry.name, ownership.AUDIT, legacy=ownership.is_legacy_audit)
    ownership.refuse_if_held(out)
    with ownership.using(out, KIND, "robustdistill sweep"):
        index = out / INDEX
        if index.exists() and not ownership.owns(out, index):
            raise UserInputError("out", f"{index} exists and was not written by robustdistill", "move it away")
        for entry in sweep.entries:
            train_missing(entry)
        if runner is None:
            reports = [_audit_entry(sweep, number, entry, out, device, progress)
                       for number, entry in enumerate(sweep.entries, start=1)]
        else:
            with runner:
                reports = _audits_side_by_side(sweep, out, device, progress, runner)
        entries = [{**index_entry(out / entry.name, out, name=entry.name),
                    "parameters": student_parameters(report, entry.student)}
                   for entry, report in zip(sweep.entries, reports)]
        render_sweep_index(entries, index, title=sweep.name + (f": {sweep.description}" if sweep.description else ""))
        ownership.record(out, [index])
    return sweep, reports, index


def _audit_entry(sweep: Sweep, number: int, entry: SweepEntry, out: Path, device: str | None,
                 progress: bool | None, runner: Any = None) -> Any:
    from robustdistill.audits import audit
    from robustdistill.audits.resume import resumable

    run_dir = out / entry.name
    log.info("sweep %s: audit %d/%d, %s against %s", sweep.name, number, len(sweep.entries), entry.student,
             entry.teacher)
    return audit(entry.suite, teacher=entry.teacher, student=entry.student, out=run_dir,
                 resume=resumable(run_dir, Path(entry.teacher), Path(entry.student)), device=device,
                 progress=progress, executor=runner)


def _audits_side_by_side(sweep: Sweep, out: Path, device: str | None, progress: bool | None, runner: Any) -> list[Any]:
    """Every audit at once on ``runner``: a driver thread per audit (at most SIDE_BY_SIDE) prepares it, submits its
    units and stores their records; one progress display counts the audits. The first error stops the sweep: the
    units still running are cancelled, those finished stay stored for the next run to resume."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from robustdistill.progress import WorkProgress

    entries = list(enumerate(sweep.entries, start=1))
    with WorkProgress(f"sweep {sweep.name}", len(entries), len(entries), enabled=progress, unit_name="audits") as bar:
        with ThreadPoolExecutor(max_workers=min(len(entries), SIDE_BY_SIDE), thread_name_prefix="sweep") as pool:
            futures = {pool.submit(_audit_entry, sweep, number, entry, out, device, False, runner): entry
                       for number, entry in entries}
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.finished(futures[future].name, 1.0)
            except BaseException:
                for future in futures:
                    future.cancel()
                runner.cancel_all()
                raise
        return [future.result() for future in futures]  # in entry order


def train_missing(entry: SweepEntry) -> None:
    """Train the entry's teacher, then its student, from their recipes where they are missing; a student recipe that
    distils from a teacher distils from this entry's. A training an earlier sweep was interrupted in continues from
    its ``.partial`` folder, as the audit's own ``[pipeline] recipes`` do (runner.train_missing)."""
    from robustdistill.trainers import TRAINERS, read_toml as read_recipe, train_from_recipe

    for path, recipe, is_student in ((entry.teacher, entry.teacher_recipe, False),
                                     (entry.student, entry.student_recipe, True)):
        if recipe is None or Path(path).exists():
            continue
        method = read_recipe(recipe, f"{'student' if is_student else 'teacher'}_recipe").get("method", "")
        fields = getattr(TRAINERS.get(method).config_class, "__dataclass_fields__", {})
        overrides = [f"teacher={entry.teacher}"] if is_student and "teacher" in fields else []
        log.info("sweep: %s is missing, training it from %s", path, recipe)
        train_from_recipe(recipe, out=path, overrides=overrides, resume=True)


def student_parameters(report: Any, student: str) -> int | None:
    """The student's parameter count: its size probe's row when the suite has one, else the sum of the tensor sizes
    a safetensors checkpoint declares in its header (nothing is loaded); None when neither says."""
    for row in report.rows:
        if row["model"] == "student" and row["metric"] == "parameters" and row["value"] is not None:
            return int(row["value"])
    weights = Path(student) / "model.safetensors" if Path(student).is_dir() else Path(student)
    if weights.suffix != ".safetensors" or not weights.is_file():
        return None
    from math import prod

    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return sum(prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    except Exception:  # noqa: BLE001 - an unreadable file has no known size; the audit itself said what was wrong
        return None
