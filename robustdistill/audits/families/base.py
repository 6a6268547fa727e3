"""The model-family interface (DESIGN.md, "Model families"): what the runner and the report builder ask of a family.

The runner, the run store, gates and report assembly are the same for every family; everything that depends on what
a model is (its evaluation data, how to check that a model fits that data, the context a probe unit runs in, the rows
and flags derived across units, the artifacts merged for the report) is one :class:`ModelFamily` subclass,
registered in ``FAMILIES``. A probe names its family (``Probe.family``); every probe of a suite must share one, and
every model a unit runs on must be of it (:func:`robustdistill.audits.families.check_fit`).

A family's life in one audit::

    data = family.load_data(suite)                          # before anything is written
    family.check_models(models, data, suite)                # each model runs on that data
    plan = family.plan(suite, data)                         # run-level choices (e.g. which probe's examples)
    identity = family.unit_identity(probe, plan)            # extra keys of each unit's key
    ctx = family.context(data, models, suite, artifacts, plan)
    ... units run ...
    rows, flags = family.derive(manifest, units)            # when the report is built: pure function of the units
    written = family.finish(run_dir, manifest, units, roles)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from robustdistill.audits.probes.base import EvalContext
from robustdistill.registry import Registry


class EvalData(Protocol):
    """A family's evaluation data: its size and a fingerprint (part of every unit's key)."""

    fingerprint: str

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class StoredUnit:
    """One finished unit as the report builder sees it: its plan entry, its record and its per-point masks."""

    probe: str
    kind: str
    roles: tuple[str, ...]
    params: dict[str, Any]
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()  # file names under the run's artifacts/
    rows: tuple[dict[str, Any], ...] = ()  # the unit's own result rows, as stored


@dataclass
class Plan:
    """Run-level choices a family makes once per audit: ``manifest`` entries (stored, read back by :meth:`derive`
    and :meth:`finish`) and ``context`` keywords (for :meth:`ModelFamily.context` only)."""

    manifest: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


class ModelFamily:
    """Base class; a family overrides what its models need. ``name`` is what probes declare."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how a message names one such model: "an image classifier"

    def accepts(self, model: Any) -> bool:
        """Whether a loaded model (robustdistill.load_model's result, or a user's in-memory object) is of this
        family."""
        raise NotImplementedError

    def load_data(self, suite: Any) -> EvalData:
        """The suite's evaluation data (``[data]``, its split, ``samples`` points drawn with the suite's seed)."""
        raise NotImplementedError(f"the {self.name} family has no probes yet")

    def check_models(self, models: Mapping[str, Any], data: EvalData, suite: Any) -> None:
        """Raise UserInputError naming the role when a model cannot run on the data (before anything is written)."""

    def plan(self, suite: Any, data: EvalData) -> Plan:
        return Plan()

    def unit_identity(self, probe: Any, plan: Plan) -> dict[str, Any]:
        """Keys a unit's identity adds for this family (a change in them means the unit must be re-run)."""
        return {}

    def context(self, data: EvalData, models: Mapping[str, Any], suite: Any, artifacts: Path, plan: Plan) -> EvalContext:
        raise NotImplementedError(f"the {self.name} family has no probes yet")

    def derive(self, manifest: Mapping[str, Any], units: Sequence[StoredUnit]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows and flags computed across the stored units (``units`` in plan order) when the report is built."""
        return [], []

    def finish(self, run_dir: Path, manifest: Mapping[str, Any], units: Sequence[StoredUnit], roles: list[str]) -> list[Path]:
        """Write the family's report artifacts from the stored units; return the files written."""
        return []


def instance_if_loaded(model: Any, module: str, class_name: str) -> bool:
    """``isinstance(model, module.class_name)`` when that module is loaded, else False: a model of the class exists
    only once its module is, so checking costs no import (of transformers or diffusers)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(model, getattr(loaded, class_name))


FAMILIES: Registry[type[ModelFamily]] = Registry("model family")
