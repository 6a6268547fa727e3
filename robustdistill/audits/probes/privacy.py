"""Membership-inference probes: ``kind = "mia-loss"``, ``"mia-confidence"`` and ``"mia-lira"`` in a suite. The
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
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from robustdistill.attacks.privacy import lira, membership, scores
from robustdistill.attacks.privacy.metrics import TPR_METRICS, MembershipMetrics, membership_metrics
from robustdistill.attacks.privacy.shadows import (Recipe, ShadowJob, cache_root, recipe_from_file,
                                                   recipe_from_provenance, train_shadow)
from robustdistill.audits.probes.base import PROBES, EvalContext, Probe, ProbeConfig, UnitResult, value_row
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
        return self.config.model_dump(mode="json", exclude={"kind", "name"})

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


@PROBES.register("mia-loss")
class LossProbe(MembershipProbe):
    """Loss-threshold membership inference (Yeom, Giacomelli, Fredrikson and Jha, CSF 2018): members have lower
    loss. The score is minus the cross-entropy of the true label; metrics are threshold-free (AUC, ROC)."""

    kind = "mia-loss"

    def score(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, view: View) -> np.ndarray:
        return scores.loss_score(population_logits(ctx.models[role], truth, ctx)[0], truth.population.y).numpy()


@PROBES.register("mia-confidence")
class ConfidenceProbe(MembershipProbe):
    """Confidence-threshold membership inference (Salem et al., NDSS 2019, "ML-Leaks"): members get more confident
    predictions. The score is the largest softmax probability; it needs no label."""

    kind = "mia-confidence"

    def score(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, view: View) -> np.ndarray:
        return scores.confidence_score(population_logits(ctx.models[role], truth, ctx)[0]).numpy()


class LiraConfig(MiaConfig):
    """LiRA settings. ``shadows``: shadow models per ground truth (the paper uses up to 256; each point is IN for
    half of them when the target trained on half the population). ``fixed_variance``: one pooled variance instead
    of per-point ones ("auto": when there are fewer than 64 shadows, as the paper advises). ``queries``: the views
    each point is queried with ("auto": those of the recipe's augmentation). ``recipes``: role -> recipe TOML, for
    models whose checkpoints do not record how they were trained. ``cache``: where shadow models are kept."""

    variant: Literal["online", "offline"] = "online"
    shadows: int = Field(16, ge=2, le=1024)
    fixed_variance: bool | Literal["auto"] = "auto"
    queries: scores.Query = "auto"
    recipes: dict[str, str] = Field(default_factory=dict)
    cache: str | None = None


@PROBES.register("mia-lira")
class LiraProbe(MembershipProbe):
    """The likelihood-ratio attack (Carlini et al., IEEE S&P 2022), online or offline, with shadow models trained by
    the target's own recipe on balanced random subsets of the population (see robustdistill.attacks.privacy.lira).

    For a student against the teacher's members, each shadow is a whole pipeline: a shadow teacher trained on a
    subset, and a shadow student distilled from it on the student's data (the same subset when the student trained
    on the teacher's members, the rest of the population when it trained on exactly what the teacher left out,
    otherwise the student's own data)."""

    kind = "mia-lira"
    config_class = LiraConfig
    config: LiraConfig

    def params(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json", exclude={"kind", "name", "cache"})

    @property
    def fixed_variance(self) -> bool:
        value = self.config.fixed_variance
        return self.config.shadows < lira.PER_POINT_MIN_SHADOWS if value == "auto" else bool(value)

    def check_models(self, models: Mapping[str, nn.Module], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        super().check_models(models, checkpoints)
        unknown = sorted(set(self.config.recipes) - set(models))
        if unknown:
            raise UserInputError(f"{self.where}.recipes.{unknown[0]}", "is not a model of this suite",
                                 f"use one of {', '.join(models)}")
        self.recipes: dict[str, Recipe] = {}
        self.checkpoints = dict(checkpoints)
        self.provenances = {role: getattr(m, "provenance", None) or {} for role, m in models.items()}
        for roles in self.units(list(models)):
            for role in {roles[0], *( ["teacher"] if len(roles) > 1 and "teacher" in self.config.views else [])}:
                if role not in self.recipes:
                    self.recipes[role] = self.recipe(role)
        for role, truth in self.truth.items():
            keep = truth.n_members / len(truth.population)
            n_in = int(min(max(round(keep * self.config.shadows), 1), self.config.shadows - 1))
            if min(n_in, self.config.shadows - n_in) < 2:  # a variance needs two scores on each side
                need = int(np.ceil(2 / min(keep, 1 - keep)))
                raise UserInputError(f"{self.where}.shadows", f"{self.config.shadows} shadow models leave some points with "
                                     f"fewer than two IN or OUT models ({truth.n_members} of {len(truth.population)} "
                                     f"points are the {role}'s members)", f"use at least {need} shadow models")
        own_view = "own" in self.config.views
        self.fixed_teachers = {role: self.fixed_teacher(role) for role, recipe in self.recipes.items()
                               if recipe.is_distillation and (own_view or role == "teacher")}

    def recipe(self, role: str) -> Recipe:
        where = f"{self.where}.recipes.{role}"
        if role in self.config.recipes:
            return recipe_from_file(self.config.recipes[role], where)
        found = recipe_from_provenance(self.provenances[role], f"provenance of {self.checkpoints[role].get('path')}")
        if found is None:
            raise UserInputError(where, f"LiRA trains shadow models with the {role}'s recipe, and its checkpoint does "
                                 "not record one", f"set {where} = 'defenses/<recipe>.toml' (how it was trained)")
        return found

    def fixed_teacher(self, role: str) -> tuple[Path, str]:
        """The real teacher a distilled model's own-member shadows learn from: (checkpoint path, sha256)."""
        from robustdistill.models import checkpoint_sha256

        recipe = self.recipes[role]
        parents = [p for p in self.provenances[role].get("parents", []) if p.get("role") == "teacher"]
        audited = self.checkpoints.get("teacher", {})
        where = f"{self.where}.recipes.{role}"
        if not parents:  # a recipe from the suite: its teacher path, as written
            path = Path(recipe.config["teacher"])
            if not (path / "config.json").is_file():
                raise UserInputError(where, f"its teacher {path} does not exist", "train it, or fix the recipe's path")
            return path, checkpoint_sha256(path)
        sha = parents[0].get("sha256")
        if role != "teacher" and audited.get("path") and audited.get("sha256") == sha:
            return Path(audited["path"]), sha
        path = Path(parents[0].get("path", ""))
        if (path / "config.json").is_file() and checkpoint_sha256(path) == sha:
            return path, sha
        raise UserInputError(where, f"the {role} was distilled from a teacher that is not available ({path}, sha256 "
                             f"{str(sha)[:12]}...), and its shadow models need it",
                             "audit it with that teacher as the suite's teacher, or restore the checkpoint")

    def queries_for(self, role: str) -> str:
        if self.config.queries != "auto":
            return self.config.queries
        return scores.queries_for_augment(self.recipes[role].augment)

    def extra_row_params(self, role: str, view: View) -> dict[str, Any]:
        return {"variant": self.config.variant, "shadows": self.config.shadows, "fixed_variance_used": self.fixed_variance,
                "queries_used": self.queries_for(role)}

    # --- shadow models ------------------------------------------------------------------------------------------
    def design(self, truth: membership.GroundTruth, ctx: EvalContext) -> np.ndarray:
        from robustdistill.trainers.base import derived_seed

        keep = truth.n_members / len(truth.population)
        seed = derived_seed(ctx.seed, "lira-design", truth.population.fingerprint, self.config.shadows) % 2**32
        return lira.balanced_design(self.config.shadows, len(truth.population), keep, seed)

    def shadow_seed(self, ctx: EvalContext, *parts: Any) -> int:
        from robustdistill.trainers.base import derived_seed

        return derived_seed(ctx.seed, "shadow", *parts) % 2**31

    def teacher_jobs(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, design: np.ndarray) -> list[ShadowJob]:
        recipe = self.recipes[role]
        teacher, teacher_key = (self.fixed_teachers[role] if recipe.is_distillation else (None, None))
        return [ShadowJob(recipe, truth.population.split(design[k]), self.shadow_seed(ctx, role, k),
                          teacher, teacher_key) for k in range(len(design))]

    def run_shadows(self, jobs: list[ShadowJob], ctx: EvalContext, truth: membership.GroundTruth, queries: str,
                    label: str, score: bool = True) -> tuple[np.ndarray | None, list[Path]]:
        """(S, N, Q) LiRA scores of each shadow on the population (None unless ``score``), and the shadows' paths."""
        from robustdistill.models import load_model

        root = cache_root(self.config.cache)
        device = str(model_device(next(iter(ctx.models.values()))))
        out, paths, trained = [], [], 0
        for job in tqdm(jobs, desc=f"{self.name}: {label} shadow models", unit="model", leave=False, disable=None):
            path, fresh = train_shadow(job, root, device)
            trained += fresh
            paths.append(path)
            if not score:
                continue
            model = load_model(path, device=device)
            phi = scores.lira_score(scores.logits_of(model, truth.population.x, queries, ctx.batch_size), truth.population.y)
            out.append(phi.T.numpy())
        log.info("%s: %d %s shadow models (%d trained, %d from the cache %s)", self.name, len(jobs), label, trained,
                 len(jobs) - trained, root)
        return (np.stack(out) if score else None), paths

    def score(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, view: View) -> np.ndarray:
        queries = self.queries_for(role)
        design = self.design(truth, ctx)
        if view == "own":
            shadow_scores, _ = self.run_shadows(self.teacher_jobs(ctx, role, truth, design), ctx, truth, queries, role)
        else:
            _, teacher_paths = self.run_shadows(self.teacher_jobs(ctx, "teacher", truth, design), ctx, truth,
                                                self.queries_for("teacher"), "teacher", score=False)
            jobs = self.pipeline_jobs(ctx, role, truth, design, teacher_paths)
            shadow_scores, _ = self.run_shadows(jobs, ctx, truth, queries, f"{role} (pipeline)")
        assert shadow_scores is not None
        target = scores.lira_score(scores.logits_of(ctx.models[role], truth.population.x, queries, ctx.batch_size),
                                   truth.population.y).T.numpy()
        fit = lira.fit_gaussians(shadow_scores, design, self.fixed_variance)
        if self.config.variant == "online":
            return lira.online_scores(target, fit)
        return lira.offline_scores(target, fit)

    def pipeline_jobs(self, ctx: EvalContext, role: str, truth: membership.GroundTruth, design: np.ndarray,
                      teacher_paths: list[Path]) -> list[ShadowJob]:
        recipe = self.recipes[role]
        own = self.truth.get(role)
        if own is None:
            try:
                own = membership.from_provenance(role, self.provenances[role], "", "")
            except UserInputError:
                own = None
        relation = membership.relation(own, truth)
        log.info("%s: %s trained on %s of the teacher's population", self.name, role,
                 {"same": "the teacher's members", "rest": "the points the teacher left out"}.get(relation, "its own data"))
        jobs = []
        for k, teacher in enumerate(teacher_paths):
            train = {"same": truth.population.split(design[k]), "rest": truth.population.split(~design[k])}.get(relation)
            if recipe.is_distillation:
                jobs.append(ShadowJob(recipe, train, self.shadow_seed(ctx, "pipeline", k), teacher, teacher.name))
            else:
                jobs.append(ShadowJob(recipe, train, self.shadow_seed(ctx, "pipeline", k)))
        return jobs


__all__ = ["ConfidenceProbe", "LiraProbe", "LossProbe", "MembershipProbe"]
