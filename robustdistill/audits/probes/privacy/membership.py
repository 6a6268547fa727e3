"""The base of the membership-inference probes (``kind = "mia-loss"``, ``"mia-confidence"`` and ``"mia-lira"`` in a
suite; one file each beside this one). The
scores, LiRA statistics, metrics and shadow training they use are in :mod:`robustdistill.attacks.privacy`.

Each model is attacked against its own training members and - the distillation view - every model other than the
teacher is also attacked with the TEACHER's members as ground truth: did the student inherit the teacher's
membership signal (Jagielski et al. 2023, "Students Parrot Their Teachers")? Rows (one unit per model)::

    <role>.<probe>.auc / balanced_accuracy / tpr_at_0_1pct_fpr / tpr_at_1pct_fpr           (own members)
    <role>.<probe>.teacher_members_auc / ... / teacher_members_tpr_at_1pct_fpr             (the teacher's members)

and ``artifacts/roc-<probe>-<role>.npz`` (``fpr_own``, ``tpr_own``, ``fpr_teacher``, ``tpr_teacher``) for the ROC
plot. A suite for checkpoints trained elsewhere gives the ground truth itself::

    [[probes]]
    kind = "mia-lira"
    recipes = { teacher = "defenses/my-teacher.toml" }          # how it was trained, for the shadow models
    [probes.ground_truth.teacher]
    members = { kind = "imagefolder", root = "data/private", split = "train" }
    nonmembers = { kind = "imagefolder", root = "data/private", split = "test" }
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from robustdistill.attacks.privacy import membership, scores
from robustdistill.attacks.privacy.metrics import TPR_METRICS, MembershipMetrics, membership_metrics
from robustdistill.audits.probes.base import EvalContext, Probe, ProbeConfig, UnitResult, value_row
from robustdistill.data import SPLITS, parse_spec
from robustdistill.errors import UserInputError
from robustdistill.utils import atomic_path, model_device

log = logging.getLogger(__name__)

OWN_METRICS = ("auc", "balanced_accuracy", *TPR_METRICS.values())
TEACHER_PREFIX = "teacher_members_"
View = Literal["own", "teacher"]


class GroundTruthTable(BaseModel):
    """Members and non-members of one model, each a data spec with a ``split``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    members: dict[str, Any]
    nonmembers: dict[str, Any]


class MiaConfig(ProbeConfig):
    views: list[View] = Field(default_factory=lambda: ["own", "teacher"], min_length=1)
    ground_truth: dict[str, GroundTruthTable] = Field(default_factory=dict)


class MembershipProbe(Probe):
    """Base: resolves each model's ground truth before anything is written, scores, and turns scores into rows."""

    config_class: ClassVar[type[ProbeConfig]] = MiaConfig
    family = "classifier"
    group = "privacy"
    metrics = (*OWN_METRICS, *(TEACHER_PREFIX + m for m in OWN_METRICS))
    needs_threat_model = False
    config: MiaConfig

    def validate(self) -> None:
        for role, table in self.config.ground_truth.items():
            for name in ("members", "nonmembers"):
                spec = dict(getattr(table, name))
                where = f"{self.where}.ground_truth.{role}.{name}"
                split = spec.pop("split", "train" if name == "members" else "test")
                if split not in SPLITS:
                    raise UserInputError(f"{where}.split", f"{split!r} is not a split", f"use one of {', '.join(SPLITS)}")
                try:
                    parse_spec(spec)
                except UserInputError as exc:
                    raise UserInputError(f"{where}.{exc.field.removeprefix('data.')}", exc.problem, exc.fix) from None
        self.truth: dict[str, membership.GroundTruth] = {}

    def params(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json", exclude={"kind", "name", "models"})

    def produces(self, role: str) -> tuple[str, ...]:
        """Own-member metrics with the "own" view; teacher_members_* with the "teacher" view, for every model but
        the teacher (whose own members those are)."""
        own = OWN_METRICS if "own" in self.config.views else ()
        teacher = OWN_METRICS if "teacher" in self.config.views and role != "teacher" else ()
        return (*own, *(TEACHER_PREFIX + m for m in teacher))

    def units(self, roles: list[str]) -> list[tuple[str, ...]]:
        """The teacher alone (own members); every other model with the teacher (whose members it may leak)."""
        units: list[tuple[str, ...]] = [("teacher",)] if "own" in self.config.views else []
        return units + [(role, "teacher") for role in roles if role != "teacher"]

    # --- checked before the run directory exists ---------------------------------------------------------------
    def check_models(self, models: Mapping[str, nn.Module], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        unknown = sorted(set(self.config.ground_truth) - set(models))
        if unknown:
            raise UserInputError(f"{self.where}.ground_truth.{unknown[0]}", "is not a model of this suite",
                                 f"use one of {', '.join(models)}")
        needed = set()
        for roles in self.units(list(models)):
            if "own" in self.config.views:
                needed.add(roles[0])
            if len(roles) > 1 and "teacher" in self.config.views:
                needed.add("teacher")
        for role in sorted(needed):
            self.truth[role] = self.ground_truth(role, models[role], checkpoints[role])
        for roles in self.units(list(models)):
            for role, view in ((roles[0], "own"), (roles[0], "teacher")):
                if view in self.config.views and (view == "own" or roles[0] != "teacher"):
                    self.check_runs_on(role, models[role], self.truth[role if view == "own" else "teacher"])

    def check_runs_on(self, role: str, model: nn.Module, truth: membership.GroundTruth) -> None:
        """One forward pass on two population points: the model must take this data and have a logit per class."""
        where = f"{self.where}.ground_truth.{truth.role}"
        try:
            with torch.no_grad():
                logits = model(truth.population.x[:2].to(model_device(model)))
        except Exception as exc:  # the user's model on the user's data: a message, not a traceback
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(where, f"the {role} cannot run on this data ({truth.population.description}): "
                                 f"{message}", "give membership data of the kind the model was trained on") from None
        if logits.ndim != 2 or logits.shape[1] != len(truth.population.classes):
            raise UserInputError(where, f"the {role} has {tuple(logits.shape)[1:]} outputs for data with "
                                 f"{len(truth.population.classes)} classes", "give membership data from the model's task")

    def ground_truth(self, role: str, model: nn.Module, checkpoint: Mapping[str, Any]) -> membership.GroundTruth:
        where = f"{self.where}.ground_truth.{role}"
        table = self.config.ground_truth.get(role)
        if table is not None:
            return membership.from_specs(role, table.members, table.nonmembers, where)
        source = checkpoint.get("path") or "the in-memory model"
        fix = (f"add [{self.where.split(' ')[0]}.ground_truth.{role}] with members = {{ kind = ..., split = 'train' }} "
               "and nonmembers = { ..., split = 'test' }, or audit a checkpoint trained by `robustdistill train`")
        provenance = getattr(model, "provenance", None) or {}
        try:
            return membership.from_provenance(role, provenance, where, fix)
        except UserInputError as exc:
            raise UserInputError(exc.field, f"{exc.problem} ({source})", exc.fix) from None

    # --- running ----------------------------------------------------------------------------------------------
    def score(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, view: View) -> np.ndarray:
        raise NotImplementedError

    def run(self, ctx: EvalContext, roles: tuple[str, ...]) -> UnitResult:
        role = roles[0]
        rows: list[dict[str, Any]] = []
        curves: dict[str, np.ndarray] = {}
        views = [v for v in self.config.views if v == "own" or role != "teacher"]
        for view in views:
            truth = self.truth[role if view == "own" else "teacher"]
            result = membership_metrics(self.score(ctx, role, truth, view), truth.is_member)
            rows += self.metric_rows(role, view, truth, result)
            curves[f"fpr_{view}"], curves[f"tpr_{view}"] = result.fpr, result.tpr
            log.info("%s on %s (%s members): AUC %.3f", self.name, role, view, result.auc)
        artifacts = []
        if ctx.artifacts is not None:
            name = f"roc-{self.name}-{role}.npz"
            with atomic_path(ctx.artifacts / name) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **curves)
            artifacts.append(name)
        return UnitResult(rows, artifacts=artifacts)

    def metric_rows(self, role: str, view: View, truth: membership.GroundTruth, m: MembershipMetrics) -> list[dict[str, Any]]:
        prefix = "" if view == "own" else TEACHER_PREFIX
        base = self.row_params(attack=self.kind, members_of=view, n_members=m.n_members, n_nonmembers=m.n_nonmembers,
                               ground_truth=truth.source, population=truth.population.description,
                               **self.extra_row_params(role, view))
        n = m.n_members + m.n_nonmembers
        rows = [value_row(self.name, role, prefix + "auc", m.auc, n, base, m.auc_ci95),
                value_row(self.name, role, prefix + "balanced_accuracy", m.balanced_accuracy, n, base)]
        for fpr, metric in TPR_METRICS.items():
            tpr = m.tpr_at[fpr]
            params = {**base, "fpr": fpr, "resolvable": tpr.resolvable,
                      "false_positives_allowed": tpr.false_positives_allowed}
            if tpr.note:
                params["note"] = tpr.note
            rows.append(value_row(self.name, role, prefix + metric, tpr.value, m.n_members, params, tpr.ci95))
        return rows

    def extra_row_params(self, role: str, view: View) -> dict[str, Any]:
        return {}


def population_logits(model: nn.Module, truth: membership.GroundTruth, ctx: EvalContext, queries: str = "none") -> torch.Tensor:
    return scores.logits_of(model, truth.population.x, queries, ctx.batch_size)
