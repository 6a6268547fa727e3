"""The ``mia-lira`` probe: the likelihood-ratio attack with shadow models trained by the target's own recipe."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from robustdistill.attacks.privacy import lira, membership, scores
from robustdistill.attacks.privacy.shadows import (Recipe, ShadowJob, cache_root, recipe_from_file,
                                                   recipe_from_provenance, train_shadow)
from robustdistill.audits.probes.base import PROBES, EvalContext
from robustdistill.audits.probes.privacy.membership import MembershipProbe, MiaConfig, View
from robustdistill.errors import UserInputError
from robustdistill.utils import model_device

log = logging.getLogger(__name__)

SHADOW_STEPS = 40.0  # one shadow model trained on digits: about 2 s, forty PGD steps' worth (the progress bar's unit)


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
        return self.config.model_dump(mode="json", exclude={"kind", "name", "models", "cache"})

    def expected_cost(self) -> float:
        return self.config.shadows * SHADOW_STEPS

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
