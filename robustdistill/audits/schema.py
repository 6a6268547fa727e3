"""The audit suite: a TOML file validated into a :class:`Suite`, every error naming its field.

A suite (audits/*.toml)::

    name = "digits"
    seed = 0
    samples = 359                      # evaluated test points (a seeded, class-balanced subset; omit for all)
    device = "auto"

    [pipeline]
    teacher = "checkpoints/digits-standard"
    student = "checkpoints/digits-kd"
    # extra = { robust_teacher = "checkpoints/digits-pgd-at" }   # more named models, audited like the student
    # recipes = { teacher = "defenses/digits-standard.toml" }    # a model missing on disk is trained first

    [data]
    kind = "digits"
    split = "test"

    [threat_model]
    use = "attacks/digits-linf.toml"   # or: norm = "linf", eps = 0.125

    [[probes]]
    use = "attacks/digits-linf.toml"   # the preset's [[probes]] (and its [threat_model])

    [[probes]]
    kind = "attack"
    name = "pgd-50"
    attack = "pgd"
    params = { steps = 50 }

    [gates]
    "student.autoattack.robust_accuracy" = { min = 0.5 }
    "retention.autoattack" = { min = 0.8 }

Relative paths resolve against the working directory, then the suite's folder, then its parent.
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from robustdistill.audits.gates import Gate, parse_gates
from robustdistill.data import DataSpec, SPLITS, parse_spec
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_SEED, check_eps, read_text

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ROLE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
PROBE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RESERVED_ROLES = frozenset({"teacher", "student", "retention"})

# --------------------------------------------------------------------------------------------------------------
# Error helpers


def field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    """("probes", 2, "eps") -> "probes[2].eps"; a prefix is joined with a dot."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "suite"


def user_error(exc: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> UserInputError:
    """The first pydantic error as a UserInputError naming the field and the fix."""
    error = exc.errors()[0]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, UserInputError):
        return original
    loc = tuple(error.get("loc", ()))
    where = field_path(prefix, loc)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        known = list(model.model_fields) if model is not None and len(loc) == 1 else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return UserInputError(where, "unknown key", f"{hint}known keys: {', '.join(known)}" if known else "remove it")
    if kind == "missing":
        return UserInputError(where, "is required", "add it")
    return UserInputError(where, error.get("msg", "is invalid"), f"got {error.get('input')!r}")


# --------------------------------------------------------------------------------------------------------------
# Sections


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThreatModel(Strict):
    """The threat model every attack probe uses unless it sets its own eps: an L-inf or L2 ball in [0, 1] pixels."""

    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(ge=0)


class Pipeline(Strict):
    """Which models the audit compares: a teacher, a student, and optional extra named models (role -> path).
    ``recipes`` (role -> training recipe): a model missing at its path is trained there first, in the order the
    table lists them, so a suite of several trained models runs on a fresh clone."""

    teacher: str | None = None
    student: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    recipes: dict[str, str] = Field(default_factory=dict)

    def path(self, role: str) -> str | None:
        return getattr(self, role) if role in ("teacher", "student") else self.extra.get(role)


class Top(Strict):
    """The top-level keys (sections are validated on their own, so their errors name their own fields)."""

    name: str = "audit"
    description: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    samples: int | None = Field(None, ge=1)
    device: str = "auto"
    batch_size: int = Field(512, ge=1)
    examples: str | None = None
    pipeline: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    threat_model: dict[str, Any] | None = None
    probes: list[dict[str, Any]] = Field(default_factory=list)
    gates: dict[str, Any] = Field(default_factory=dict)
    verdict: dict[str, Any] = Field(default_factory=dict)


class VerdictPolicy(Strict):
    """``[verdict]``: what besides failed gates fails the audit. A gradient-masking flag on any audited model fails
    it by default, gates or none (its robustness numbers are not to be trusted); ``gradient_masking = "warn"``
    keeps the flag in the report without failing the verdict - an explicit opt-out, recorded in report.json.
    Incomplete runs and NaN or infinite model outputs always fail it."""

    gradient_masking: Literal["fail", "warn"] = "fail"


@dataclass
class Suite:
    """A validated suite. ``probes`` are :class:`~robustdistill.audits.probes.Probe` instances."""

    name: str
    seed: int
    samples: int | None
    device: str
    batch_size: int
    pipeline: Pipeline
    data: Any  # DataSpec (images) or InstructionSpec (language models)
    split: str
    threat_model: ThreatModel
    probes: list[Any]
    gates: list[Gate]
    examples: str | None
    description: str | None = None
    source: Path | None = None
    raw_gates: dict[str, dict[str, float]] = field(default_factory=dict)
    verdict: VerdictPolicy = field(default_factory=VerdictPolicy)

    @property
    def roles(self) -> list[str]:
        return ["teacher", "student", *self.pipeline.extra]

    def probe(self, name: str) -> Any:
        for probe in self.probes:
            if probe.name == name:
                return probe
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved suite (presets expanded, paths resolved): valid input to :func:`load_suite` again."""
        data = self.data.model_dump(mode="json", exclude_defaults=True)
        data = {"kind": self.data.kind, **data, "split": self.split}
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out |= {"seed": self.seed, "samples": self.samples, "device": self.device, "batch_size": self.batch_size}
        if self.examples:
            out["examples"] = self.examples
        out["pipeline"] = self.pipeline.model_dump(mode="json")
        out["data"] = data
        out["threat_model"] = self.threat_model.model_dump(mode="json")
        out["probes"] = [probe.spec() for probe in self.probes]
        out["gates"] = copy.deepcopy(self.raw_gates)
        out["verdict"] = self.verdict.model_dump(mode="json")
        if out["samples"] is None:
            del out["samples"]
        return out


# --------------------------------------------------------------------------------------------------------------
# Loading


def resolve_path(value: str, base: Path | None) -> str:
    """Relative to the working directory if it exists there, else to the suite's folder, else to its parent."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or base is None:
        return str(path)
    for folder in (base.parent, base.parent.parent):
        if (folder / path).exists():
            return str(folder / path)
    return str(path)


def read_toml(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(where, f"file not found: {path}", "check the path (relative paths resolve against the "
                             "working directory, then the suite's folder, then its parent)")
    try:
        return tomllib.loads(read_text(path, where))
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(where, f"{path} is not valid TOML: {exc}", "fix the syntax") from None


def _preset(value: Any, base: Path | None, where: str) -> tuple[Path, dict[str, Any]]:
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(where, f"must be a path to a preset, got {value!r}", 'e.g. use = "attacks/digits-linf.toml"')
    path = Path(resolve_path(value, base))
    return path, read_toml(path, where)


def _threat_model_of(raw: Any, where: str, base: Path | None) -> ThreatModel:
    if not isinstance(raw, Mapping):
        raise UserInputError(where, f"must be a table with norm and eps, got {raw!r}", "e.g. { norm = 'linf', eps = 0.125 }")
    raw = dict(raw)
    if "use" in raw:
        path, preset = _preset(raw.pop("use"), base, f"{where}.use")
        table = preset.get("threat_model")
        if not isinstance(table, Mapping):
            raise UserInputError(f"{where}.use", f"{path} has no [threat_model] table", "point at a preset in attacks/")
        raw = {**dict(table), **raw}
    try:
        threat_model = ThreatModel.model_validate(raw)
    except ValidationError as exc:
        raise user_error(exc, where, ThreatModel) from None
    check_eps(f"{where}.eps", threat_model.eps, threat_model.norm)  # inf, 1e308: refused here, not inside an attack
    return threat_model


def _expand_probes(raw: list[Any], base: Path | None) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, ThreatModel]]]:
    """Inline ``{ use = preset }`` entries: (where, probe table) pairs, plus the presets' threat models."""
    expanded: list[tuple[str, dict[str, Any]]] = []
    threat_models: list[tuple[str, ThreatModel]] = []
    for i, item in enumerate(raw):
        where = f"probes[{i}]"
        if not isinstance(item, Mapping):
            raise UserInputError(where, f"must be a table, got {item!r}", 'e.g. { kind = "attack", attack = "pgd" }')
        if "use" not in item:
            expanded.append((where, dict(item)))
            continue
        if len(item) != 1:
            extra = sorted(k for k in item if k != "use")
            raise UserInputError(f"{where}.{extra[0]}", "a `use` entry takes no other keys",
                                 "put the preset's probes inline to change them")
        path, preset = _preset(item["use"], base, f"{where}.use")
        unknown = sorted(set(preset) - {"description", "threat_model", "probes"})
        if unknown:
            raise UserInputError(f"{path}: {unknown[0]}", "unknown key in an attack preset",
                                 "a preset holds description, [threat_model] and [[probes]]")
        if "threat_model" in preset:
            threat_models.append((str(path), _threat_model_of(preset["threat_model"], f"{path}: threat_model", path)))
        probes = preset.get("probes", [])
        if not isinstance(probes, list) or not probes:
            raise UserInputError(f"{where}.use", f"{path} has no [[probes]]", "add [[probes]] to the preset or list probes inline")
        for j, sub in enumerate(probes):
            sub_where = f"{where} ({path} probes[{j}])"
            if not isinstance(sub, Mapping):
                raise UserInputError(sub_where, f"must be a table, got {sub!r}")
            if "use" in sub:
                raise UserInputError(f"{sub_where}.use", "presets cannot use other presets", "list the probes inline")
            expanded.append((sub_where, dict(sub)))
    return expanded, threat_models


def _pipeline(raw: Any, base: Path | None, teacher: Any, student: Any, extra: Mapping[str, Any] | None) -> Pipeline:
    if not isinstance(raw, Mapping):
        raise UserInputError("pipeline", f"must be a table, got {raw!r}", "e.g. [pipeline] teacher = '...', student = '...'")
    raw = dict(raw)
    if isinstance(teacher, (str, Path)):
        raw["teacher"] = str(teacher)
    if isinstance(student, (str, Path)):
        raw["student"] = str(student)
    if extra:
        current = raw.get("extra") if isinstance(raw.get("extra"), Mapping) else {}
        raw["extra"] = {**dict(current or {}), **{str(k): str(v) for k, v in extra.items()}}
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:
        raise user_error(exc, "pipeline", Pipeline) from None
    for role in pipeline.extra:
        if not ROLE_PATTERN.match(role) or role in RESERVED_ROLES:
            raise UserInputError(f"pipeline.extra.{role}", "is not a usable role name",
                                 "use lower_snake_case other than teacher, student and retention")
    roles = ("teacher", "student", *pipeline.extra)
    for role, recipe in pipeline.recipes.items():
        if role not in roles:
            raise UserInputError(f"pipeline.recipes.{role}", "is not a model of the pipeline",
                                 f"name one of {', '.join(roles)}")
        if not Path(resolve_path(recipe, base)).is_file():
            raise UserInputError(f"pipeline.recipes.{role}", f"recipe file not found: {recipe}", "check the path")
    resolved = {
        "teacher": resolve_path(pipeline.teacher, base) if pipeline.teacher else None,
        "student": resolve_path(pipeline.student, base) if pipeline.student else None,
        "extra": {role: resolve_path(path, base) for role, path in pipeline.extra.items()},
        "recipes": {role: resolve_path(path, base) for role, path in pipeline.recipes.items()},
    }
    return Pipeline.model_validate(resolved)


def _data(raw: Any, base: Path | None) -> tuple[Any, str]:
    if not isinstance(raw, Mapping):
        raise UserInputError("data", f"must be a table, got {raw!r}", "e.g. [data] kind = 'digits'")
    raw = dict(raw)
    split = raw.pop("split", "test")
    if split not in SPLITS:
        raise UserInputError("data.split", f"{split!r} is not a split", f"use one of {', '.join(SPLITS)}")
    if isinstance(raw.get("root"), str):
        raw["root"] = resolve_path(raw["root"], base)
    from robustdistill.data.instruction_spec import InstructionSpec, is_instruction_kind

    if is_instruction_kind(raw.get("kind")):  # language-model suites: instruction data
        return InstructionSpec(**raw), str(split)
    return parse_spec(raw), str(split)


def load_suite(
    suite: str | Path | Mapping[str, Any] | Suite,
    *,
    teacher: Any = None,
    student: Any = None,
    samples: int | None = None,
    device: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Suite:
    """Read and validate a suite (a TOML path, a dict of the same shape, or a Suite), applying overrides.

    ``teacher``/``student`` given as paths replace the suite's, ``extra`` (role -> path) adds or replaces extra
    models; nn.Modules are handled by the runner.
    Raises :class:`UserInputError` naming the field (``probes[2].params.eps``, ``gates.'student.x.y'``, ...).
    """
    from robustdistill.audits.probes import build_probe  # probes import this module's helpers

    if isinstance(suite, Suite):
        suite = suite.to_dict()
        base: Path | None = None
    if isinstance(suite, Mapping):
        raw = copy.deepcopy(dict(suite))
        base = None
        source = None
    else:
        source = Path(suite).expanduser()
        raw = read_toml(source, "suite")
        base = source
        raw.setdefault("name", source.stem)
    try:
        top = Top.model_validate(raw)
    except ValidationError as exc:
        raise user_error(exc, "", Top) from None
    if not NAME_PATTERN.match(top.name):
        raise UserInputError("name", f"{top.name!r} cannot name a run directory", "use letters, digits, '.', '_' and '-'")
    if samples is not None:
        if samples < 1:
            raise UserInputError("--samples", f"must be >= 1, got {samples}", "e.g. --samples 200")
        top = top.model_copy(update={"samples": samples})
    if device is not None:
        top = top.model_copy(update={"device": device})

    pipeline = _pipeline(top.pipeline, base, teacher, student, extra)
    data, split = _data(top.data, base)
    expanded, preset_threats = _expand_probes(top.probes, base)
    if top.threat_model is not None:
        threat_model = _threat_model_of(top.threat_model, "threat_model", base)
    elif preset_threats:
        threat_model = preset_threats[0][1]
        for path, other in preset_threats[1:]:
            if other != threat_model:
                raise UserInputError("threat_model", f"the presets disagree: {preset_threats[0][0]} says "
                                     f"{threat_model.norm} {threat_model.eps:g}, {path} says {other.norm} {other.eps:g}",
                                     "set [threat_model] in the suite, or use one preset")
    else:
        from robustdistill.audits.probes import PROBES

        kinds = [table.get("kind") for _, table in expanded]
        # An unknown kind is left to build_probe, whose message names it and lists the kinds.
        if any(isinstance(kind, str) and kind in PROBES and PROBES.get(kind).needs_threat_model for kind in kinds):
            raise UserInputError("threat_model", "is missing", "add [threat_model] norm = 'linf', eps = ... or "
                                 "use = 'attacks/<preset>.toml'")
        threat_model = ThreatModel(norm="linf", eps=0.0)  # no probe attacks inputs (clean, privacy)
    check_eps("threat_model.eps", threat_model.eps, threat_model.norm, dims=data.input_values())
    for path, other in preset_threats:
        if other != threat_model:
            log.warning("suite threat model %s %g replaces %s's %s %g", threat_model.norm, threat_model.eps, path,
                        other.norm, other.eps)

    if not expanded:
        raise UserInputError("probes", "the suite has no probes", "add [[probes]] or { use = 'attacks/<preset>.toml' }")
    probes = [build_probe(table, where, threat_model, top.seed) for where, table in expanded]
    seen: dict[str, str] = {}
    for (where, _), probe in zip(expanded, probes):
        if probe.name in seen:
            raise UserInputError(f"{where}.name", f"{probe.name!r} is also the name of {seen[probe.name]}",
                                 "give each probe a distinct name")
        seen[probe.name] = where
    roles = ["teacher", "student", *pipeline.extra]
    for probe in probes:
        probe.check_roles(roles)
    gates, raw_gates = parse_gates(top.gates, roles, probes)
    try:
        verdict = VerdictPolicy.model_validate(top.verdict)
    except ValidationError as exc:
        raise user_error(exc, "verdict", VerdictPolicy) from None
    examples = top.examples
    if examples is not None:
        target = next((p for p in probes if p.name == examples), None)
        if target is None or target.kind != "attack":
            options = [p.name for p in probes if p.kind == "attack"]
            raise UserInputError("examples", f"no attack probe named {examples!r}", f"use one of {', '.join(options)}")
    return Suite(
        name=top.name, seed=top.seed, samples=top.samples, device=top.device, batch_size=top.batch_size,
        pipeline=pipeline, data=data, split=split, threat_model=threat_model, probes=probes, gates=gates,
        examples=examples, description=top.description, source=source, raw_gates=raw_gates, verdict=verdict,
    )
