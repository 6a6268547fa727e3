"""The run store: ``<run dir>/results.jsonl``, the append-only record of an audit, read as evidence.

The first line is the manifest (``"type": "manifest"``, with the run's plan); every finished probe unit appends
one line (``"type": "unit"``) keyed by (model sha256, probe, params hash), flushed and fsynced as it finishes. A
resumed run appends a fresh manifest and skips every unit whose key is already stored. A line cut short by a kill
(no newline at its end) is dropped when the store is next opened.

The lines are chained: each carries ``"prev"``, the sha256 of the line before it (line 1: 64 zeros), so an edit
of any line but the last breaks the chain at the next one. The report records the sha256 of the last line
(``results_sha256``), which commits to the whole file; ``robustdistill report`` compares it with the file, which
catches an edit of the last line too. The chain is a tamper-evident seal, not a signature: someone who rewrites
every hash (and report.json) goes unseen, so keep ``results_sha256`` somewhere else to compare.

Reading refuses (``UserInputError``) what no run writes: a line that is not a JSON object of the right shape, a
unit before any manifest, a unit not in its manifest's plan, a unit key stored twice (a resume never recomputes
a stored unit), rows or masks of a model the unit did not measure, an artifact path that leaves ``artifacts/``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from robustdistill.audits.schema import PROBE_NAME_PATTERN, ROLE_PATTERN, Gate, field_path
from robustdistill.errors import UserInputError
from robustdistill.utils import write_text_atomic

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
REPORT = "report.json"
ARTIFACTS = "artifacts"  # the run's folder of probe and family artifacts
GENESIS = "0" * 64  # the "prev" of line 1: a file whose line 1 carries it is chained throughout
INTACT, BROKEN, ABSENT = "intact", "broken", "absent"
# Probes write artifacts directly under artifacts/ (examples-<role>.npz, roc-<probe>-<role>.npz): one plain name.
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REDO = "re-run the audit into a new --out"
EDITED = f"the file was edited; {REDO}"
SHARED = f"the file was edited, or two audits wrote into one --out; {REDO}"


def line_sha256(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# The shapes of the records (what the runner writes; extra keys are allowed, wrong types are not)


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class PlanEntry(_Record):
    key: str
    probe: str = Field(pattern=PROBE_NAME_PATTERN.pattern)
    kind: str
    roles: list[str] = Field(min_length=1)


class GateEntry(_Record):
    metric: str
    op: Literal[">=", "<="]
    threshold: float
    role: str
    probe: str
    measure: str


class SuiteProbe(_Record):
    """What build_report reads of a suite's probe (a key may be absent; when present it has this type)."""

    kind: str
    name: str
    of: list[str] | None = None
    tolerance: float = 0.0
    loss_tolerance: float = 0.0


class SuiteRecord(_Record):
    probes: list[SuiteProbe] = Field(default_factory=list)
    verdict: dict[str, Any] | None = None


class ManifestRecord(_Record):
    type: Literal["manifest"]
    robustdistill: str
    torch: str
    git: str
    seed: int = Field(ge=0)
    started: str
    checkpoints: dict[str, dict[str, Any]]
    suite: SuiteRecord
    gates: list[GateEntry]
    plan: list[PlanEntry]
    examples: str | None = None
    device: str | None = None
    data: dict[str, Any] | None = None


class RowRecord(_Record):
    probe: str
    model: str
    metric: str
    value: float | None
    ci95: list[float] | None = Field(min_length=2, max_length=2)
    n: int | None = Field(ge=0)
    params: dict[str, Any]


class FlagRecord(_Record):
    kind: str
    model: str
    check: str
    evidence: str


class UnitRecord(_Record):
    type: Literal["unit"]
    key: str
    probe: str
    kind: str
    roles: list[str]
    n: int = Field(ge=0)
    rows: list[RowRecord]
    params: dict[str, Any] = Field(default_factory=dict)
    masks: dict[str, dict[str, str]] = Field(default_factory=dict)
    flags: list[FlagRecord] = Field(default_factory=list)
    artifacts: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# A read run


@dataclass
class StoredRun:
    """What results.jsonl holds: the manifests in order, the unit records by key, and the state of its chain."""

    manifests: list[dict[str, Any]]
    units: dict[str, dict[str, Any]]
    head: str  # sha256 of the last line
    chain: str  # INTACT, BROKEN or ABSENT
    problem: str = ""  # why the chain is broken or absent

    def evidence(self) -> dict[str, Any]:
        """The keys report.json's manifest records about results.jsonl."""
        entry: dict[str, Any] = {"results_sha256": self.head, "chain": self.chain}
        if self.problem:
            entry["chain_problem"] = self.problem
        return entry


def chain_line(manifest: dict[str, Any]) -> str:
    """One line on the state of results.jsonl, for the CLI (from report.json's manifest)."""
    chain, problem = manifest.get("chain"), manifest.get("chain_problem", "")
    if chain == INTACT:
        return f"results.jsonl: hash chain intact (sha256 of its last line: {manifest.get('results_sha256')})"
    if chain == BROKEN:
        return f"WARNING: results.jsonl was edited after the run ({problem}): its results are not the run's, FAIL"
    return f"results.jsonl: no hash chain ({problem})"


class RunStore:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS
        self._head: str | None = None  # sha256 of the last line written, for the next line's "prev"

    def has_results(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def read(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(manifests in order, unit records by key) of a store whose chain is not broken (what a resume continues)."""
        run = self.load()
        if run.chain == BROKEN:
            raise UserInputError(str(self.path), f"was edited after the run ({run.problem})", REDO)
        return run.manifests, run.units

    def load(self) -> StoredRun:
        """Read and check every line (module docstring); a broken chain is reported in the result, not raised."""
        if not self.path.is_file():
            raise UserInputError("run_dir", f"no {RESULTS} in {self.run_dir}",
                                 "point at a directory `robustdistill audit` wrote")
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise UserInputError(str(self.path), "is not UTF-8 text", f"the file was damaged; {REDO}") from None
        lines = text.split("\n")
        if lines[-1]:  # no newline at the end: a kill cut the last write short, so that unit is not finished
            log.warning("%s: ignoring an incomplete last line", self.path)
        reader = _Reader(self.path)
        for number, line in enumerate(lines[:-1], 1):
            if line.strip():
                reader.add(number, line)
        if not reader.manifests:
            raise UserInputError(str(self.path), "has no manifest record", REDO)
        run = StoredRun(reader.manifests, reader.units, reader.head, reader.chain(), reader.problem())
        if run.chain != BROKEN:
            _compare_with_report(run, reader.hashes, self.run_dir / REPORT)
        return run

    def start(self, manifest: dict[str, Any], *, resume: bool) -> None:
        """Begin a run: a new file holding the manifest, or (resume) the manifest appended to the old one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.has_results():
            self._drop_partial_line()
            self._append_record({"type": "manifest", **manifest})
        else:
            line = json.dumps({"type": "manifest", "prev": GENESIS, **manifest}, allow_nan=False)
            write_text_atomic(self.path, line + "\n")
            self._head = line_sha256(line)

    def append(self, record: dict[str, Any]) -> None:
        self._append_record({"type": "unit", **record})

    def _append_record(self, record: dict[str, Any]) -> None:
        if self._head is None:
            self._head = self._last_line_sha256()
        line = json.dumps({"type": record["type"], "prev": self._head, **record}, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._head = line_sha256(line)

    def _last_line_sha256(self) -> str:
        lines = [line for line in self.path.read_bytes().decode("utf-8").split("\n")[:-1] if line.strip()]
        return line_sha256(lines[-1]) if lines else GENESIS

    def _drop_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            log.warning("%s: dropping an incomplete last line", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)


# --------------------------------------------------------------------------------------------------------------
# Checking the lines


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _Reader:
    """Checks results.jsonl line by line (RunStore.load): shapes, plan membership, duplicates and the chain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifests: list[dict[str, Any]] = []
        self.units: dict[str, dict[str, Any]] = {}
        self.where: dict[str, int] = {}  # unit key -> its line
        self.plan: dict[str, dict[str, Any]] = {}  # the latest manifest's plan by key
        self.hashes: set[str] = set()
        self.head = GENESIS
        self.chained = False  # line 1 opened the chain
        self.unchained: list[int] = []  # lines without "prev"
        self.breaks: list[str] = []

    def fail(self, number: int, problem: str, fix: str = REDO) -> UserInputError:
        return UserInputError(f"{self.path} line {number}", problem, fix)

    def add(self, number: int, line: str) -> None:
        try:
            record = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise self.fail(number, "is not JSON", f"the file was edited or damaged; {REDO}") from None
        if not isinstance(record, dict):
            raise self.fail(number, f"is a JSON {type(record).__name__}, not a record", EDITED)
        self.check_chain(number, record)
        self.head = line_sha256(line)
        self.hashes.add(self.head)
        kind = record.get("type")
        if kind == "manifest":
            self.add_manifest(number, record)
        elif kind == "unit":
            self.add_unit(number, record)
        else:
            raise self.fail(number, f"has type {kind!r}, not 'manifest' or 'unit'", EDITED)

    def check_chain(self, number: int, record: dict[str, Any]) -> None:
        prev = record.get("prev")
        if not self.hashes:  # the first record opens the chain, or the file has none
            self.chained = prev == GENESIS
        if prev is None:
            self.unchained.append(number)
        elif prev != self.head:
            self.breaks.append(f"line {number} does not follow the line before it: that line or this one was "
                               "changed, removed or inserted")

    def chain(self) -> str:
        if self.breaks or (self.chained and self.unchained):
            return BROKEN
        return INTACT if self.chained else ABSENT

    def problem(self) -> str:
        if self.breaks:
            return self.breaks[0]
        if self.chained and self.unchained:
            return f"line {self.unchained[0]} carries no hash of the line before it"
        if not self.chained:
            return "written before robustdistill chained its lines: an edit cannot be detected"
        return ""

    def validate(self, number: int, model: type[BaseModel], record: dict[str, Any]) -> BaseModel:
        try:
            return model.model_validate(record)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = field_path("", tuple(error.get("loc", ())))
            problem = "is missing" if error.get("type") == "missing" else error.get("msg", "is invalid").lower()
            raise self.fail(number, f"{record.get('type')} record: {where} {problem}",
                            f"the file was edited or damaged; {REDO}") from None

    def add_manifest(self, number: int, record: dict[str, Any]) -> None:
        manifest = self.validate(number, ManifestRecord, record)
        assert isinstance(manifest, ManifestRecord)
        plan: dict[str, dict[str, Any]] = {}
        for entry, raw in zip(manifest.plan, record["plan"]):
            if entry.key in plan:
                raise self.fail(number, f"its plan lists unit {entry.key} twice", EDITED)
            bad = [role for role in entry.roles if not ROLE_PATTERN.match(role)]
            if bad:
                raise self.fail(number, f"its plan names the role {bad[0]!r}", EDITED)
            plan[entry.key] = raw
        bad = [role for role in manifest.checkpoints if not ROLE_PATTERN.match(role)]
        if bad:
            raise self.fail(number, f"its checkpoints name the role {bad[0]!r}", EDITED)
        # build_report makes a Gate of each entry: keep the fields Gate has (extra keys are not evidence).
        fields = {f.name for f in dataclasses.fields(Gate)}
        record["gates"] = [{k: v for k, v in gate.items() if k in fields} for gate in record["gates"]]
        self.plan = plan
        self.manifests.append(record)

    def add_unit(self, number: int, record: dict[str, Any]) -> None:
        unit = self.validate(number, UnitRecord, record)
        assert isinstance(unit, UnitRecord)
        if not self.manifests:
            raise self.fail(number, "is a unit before any manifest", EDITED)
        if unit.key in self.where:
            raise self.fail(number, f"stores unit {unit.key} again (first on line {self.where[unit.key]}): a run "
                            "never stores a unit twice", SHARED)
        entry = self.plan.get(unit.key)
        if entry is None:
            raise self.fail(number, f"stores unit {unit.key}, which is not in the plan of the manifest before it",
                            SHARED)
        if (unit.probe, unit.kind, unit.roles) != (entry["probe"], entry["kind"], entry["roles"]):
            raise self.fail(number, f"unit {unit.key} is not the plan's {entry['probe']} on {'+'.join(entry['roles'])}",
                            EDITED)
        self.check_contents(number, unit)
        self.where[unit.key] = number
        self.units[unit.key] = record

    def check_contents(self, number: int, unit: UnitRecord) -> None:
        """Rows, flags and masks belong to the unit's probe and models; artifacts stay inside artifacts/."""
        roles = set(unit.roles)
        for row in unit.rows:
            if row.probe != unit.probe or row.model not in roles:
                raise self.fail(number, f"a row of {row.model}.{row.probe} in the unit of {unit.probe} on "
                                f"{'+'.join(unit.roles)}", EDITED)
        for item in unit.flags:
            if item.model not in roles:
                raise self.fail(number, f"a flag on {item.model}, which this unit did not measure", EDITED)
        from robustdistill.audits.probes import PROBES  # the probes import the schema, as this module does

        probe_class = PROBES.get(unit.kind) if unit.kind in PROBES else None
        size = (unit.n + 7) // 8
        for role, masks in unit.masks.items():
            if role not in roles:
                raise self.fail(number, f"masks of {role}, which this unit did not measure", EDITED)
            # The masks the report builder indexes directly, and the names it parses, are the probe's to say.
            for name in probe_class.required_masks if probe_class is not None else ():
                if name not in masks:
                    raise self.fail(number, f"masks.{role}.{name} is missing", EDITED)
            for name, text in masks.items():
                problem = probe_class.mask_problem(name) if probe_class is not None else None
                if problem:
                    raise self.fail(number, f"masks.{role}.{name}: {problem}", EDITED)
                try:
                    packed = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    raise self.fail(number, f"masks.{role}.{name} is not base64", EDITED) from None
                if len(packed) != size:
                    raise self.fail(number, f"masks.{role}.{name} holds {8 * len(packed)} bits for n = {unit.n}",
                                    EDITED)
        for name in unit.artifacts:
            if not ARTIFACT_NAME.match(name):
                raise self.fail(number, f"artifact {name!r} is not a file name inside the run's artifacts/",
                                f"the file was edited; a run never reads outside its directory; {REDO}")


def _compare_with_report(run: StoredRun, hashes: set[str], report: Path) -> None:
    """Catch an edit of the last line: the report.json built from this run recorded the sha256 of the last line
    then; if no line has it now, or that report already found the chain broken, the file was edited."""
    try:
        recorded = json.loads(report.read_text(encoding="utf-8")).get("manifest")
    except (OSError, ValueError, AttributeError, RecursionError):
        return  # no report yet, or one that is being rebuilt anyway
    # A report of another run (same folder, earlier results.jsonl) says nothing about this file.
    if not isinstance(recorded, dict) or recorded.get("started") != run.manifests[0].get("started"):
        return
    head = recorded.get("results_sha256")
    if not isinstance(head, str):
        return
    if head not in hashes:
        run.chain, run.problem = BROKEN, (f"report.json was built when its last line had sha256 {head}; no line has "
                                          "it now: a line was changed or removed after the run")
    elif head == run.head and recorded.get("chain") == BROKEN:  # still the very file found edited before
        run.chain, run.problem = BROKEN, str(recorded.get("chain_problem") or "found edited by an earlier report")
