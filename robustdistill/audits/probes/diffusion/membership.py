"""The ``diffusion-mia`` probe: membership inference against the images a model was trained on, on every model.

Ground truth is the model's own training images where it records them (``train_members`` in the robustdistill.json
the ddpm trainer writes), else the TEACHER's: a one-step student distilled data-free saw no image, so it is attacked
with the images its teacher learnt from. Members are set against images of the same data the model (or teacher)
never saw (the rest of the train split, else the test split).
Members and non-members are balanced (at most ``members`` of each, drawn with the suite's seed) and split in halves:
on the CALIBRATION half each attack chooses its timestep (the highest AUC among ``timesteps``) and its threshold (the
best balanced accuracy); the EVALUATION half gives every number reported. (PIA's published script picks t on the
data it reports, which flatters the attack.) Attacks (robustdistill.attacks.privacy.diffusion):

- ``loss`` (Matsumoto et al. 2023), ``pia`` (Kong et al. 2024), ``secmi`` (Duan et al. 2023, at ``secmi_t`` with
  step ``secmi_interval``): white-box scores that need the model's noise prediction at any t - defined for the DDPM.
  A one-step generator (SiD's) has none (its UNet only ever denoises pure noise at t_init), so its rows carry no value
  and say why, rather than a number from a network queried where it was never trained.
- ``nearest`` (GAN-Leaks, Chen et al. 2020): the distance to the model's nearest generated sample of the same class
  (``per_class`` samples, ``steps`` DDIM steps for a DDPM). Applies to every generator: it is what the one-step
  student is attacked with ("Students Parrot Their Teachers": does the student leak what only the teacher saw?).

Rows per model and attack: ``<attack>_auc`` (Hanley-McNeil interval), ``<attack>_tpr_at_1pct_fpr`` and
``<attack>_tpr_at_0_1pct_fpr`` (Wilson intervals; "not resolvable" when the evaluation half has too few
non-members), ``<attack>_accuracy`` (balanced accuracy at the calibration threshold); each row's params give the t
chosen. The loss attack's sweep: ``loss_auc_t<t>`` per timestep, on the evaluation half (shown, never used to
choose): where the model is most vulnerable.

``classes`` restricts members and non-members to some classes: after an unlearning defence (SFD), whether the
forgotten class's training images can still be told from unseen images of that class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from robustdistill.attacks.privacy.metrics import TPR_METRICS
from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, value_row
from robustdistill.audits.probes.diffusion.context import DiffusionContext
from robustdistill.errors import UserInputError

ATTACKS = ("loss", "pia", "secmi", "nearest")
WHITE_BOX = ("loss", "pia", "secmi")
PER_ATTACK = ("auc", *TPR_METRICS.values(), "accuracy")
NOT_APPLICABLE = ("not applicable: a one-step generator has no noise prediction at an arbitrary timestep (its UNet "
                  "only denoises pure noise at t_init), so white-box diffusion scores are undefined for it; the "
                  "nearest-sample attack applies")


class DiffusionMiaConfig(ProbeConfig):
    attacks: list[str] = Field(default_factory=lambda: list(ATTACKS), min_length=1)
    timesteps: list[int] = Field(default_factory=lambda: [10, 50, 100, 200, 300, 500, 700, 900], min_length=1,
                                 max_length=64)
    repeats: int = Field(1, ge=1, le=64)  # noise draws averaged by the loss attack
    pia_p: float = Field(4.0, gt=0, le=16)
    secmi_t: int = Field(100, ge=1)
    secmi_interval: int = Field(10, ge=1)
    members: int = Field(500, ge=8, le=1_000_000)
    per_class: int = Field(100, ge=1, le=10_000)  # generated samples per class for the nearest attack
    steps: int = Field(50, ge=1, le=1000)
    # Only members and non-members of these classes (e.g. the class an unlearning defence made the model forget:
    # does membership inference still find that class's training images?); None: every class.
    classes: list[int] | None = Field(None, min_length=1, max_length=1000)


@PROBES.register("diffusion-mia")
class DiffusionMembershipProbe(Probe):
    """Membership inference against diffusion models (loss by timestep, PIA, SecMI, nearest generated sample) with
    the teacher's training images as ground truth; t and thresholds calibrated on a held-apart half."""

    kind = "diffusion-mia"
    family = "diffusion"
    group = "diffusion-privacy"
    config_class: ClassVar[type[ProbeConfig]] = DiffusionMiaConfig
    metrics = tuple(f"{a}_{m}" for a in ATTACKS for m in PER_ATTACK)
    needs_threat_model = False
    config: DiffusionMiaConfig

    def validate(self) -> None:
        cfg = self.config
        unknown = [a for a in cfg.attacks if a not in ATTACKS]
        if unknown:
            raise UserInputError(f"{self.where}.attacks", f"unknown attack {unknown[0]!r}",
                                 f"use some of: {', '.join(ATTACKS)}")
        if cfg.classes is not None and (len(set(cfg.classes)) != len(cfg.classes) or min(cfg.classes) < 0):
            raise UserInputError(f"{self.where}.classes", "must be distinct class labels >= 0",
                                 "e.g. [0] for the class an unlearning defence forgot")
        if len(set(cfg.timesteps)) != len(cfg.timesteps) or any(t < 0 for t in cfg.timesteps):
            raise UserInputError(f"{self.where}.timesteps", "must be distinct timesteps >= 0",
                                 "e.g. [10, 50, 100, 200, 300, 500, 700, 900] for a 1000-step DDPM")

    def params(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json", exclude={"kind", "name", "models"})

    def produces(self, role: str) -> tuple[str, ...]:
        names = [f"{a}_{m}" for a in self.config.attacks for m in PER_ATTACK]
        if "loss" in self.config.attacks:
            names += [f"loss_auc_t{t}" for t in self.config.timesteps]
        return tuple(names)

    def expected_cost(self) -> float:
        cfg = self.config
        white = len(cfg.timesteps) * cfg.repeats + len(cfg.timesteps) * 2 + cfg.secmi_t // cfg.secmi_interval + 3
        return (2 * cfg.members * white + 10 * cfg.per_class * cfg.steps) / 300

    # --- checked before the run directory exists ---------------------------------------------------------------
    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        from robustdistill.attacks.privacy.diffusion import check_timesteps
        from robustdistill.audits.families.classifier import role_field
        from robustdistill.audits.families.diffusion import require_conditioning

        require_conditioning(models, "class", f"the {self.kind} probe {self.name!r}")
        teacher = models.get("teacher")
        if teacher is None or not (getattr(teacher, "provenance", None) or {}).get("train_members"):
            raise UserInputError(role_field("teacher"), "records no training members (train_members in its "
                                 "robustdistill.json), so there is no ground truth to attack",
                                 "audit a teacher trained by `robustdistill train ddpm`, or drop the diffusion-mia "
                                 "probe")
        cfg = self.config
        for role, model in models.items():
            if getattr(model, "one_step_t", None) is None:
                check_timesteps(model, cfg.timesteps, f"{self.where}.timesteps")
                check_timesteps(model, [cfg.secmi_t + cfg.secmi_interval], f"{self.where}.secmi_t",
                                what="secmi_t + secmi_interval (SecMI's step beyond t)")

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        wrong = [c for c in self.config.classes or [] if c >= data.num_classes]
        if wrong:
            raise UserInputError(f"{self.where}.classes", f"{wrong[0]} is not a class of the {data.spec.kind} data "
                                 f"(0-{data.num_classes - 1})", f"choose classes from 0 to {data.num_classes - 1}")
        # Once per model whose members are the ground truth (a student attacked with its teacher's shares its check).
        for owner in dict.fromkeys(self.truth_role(models, role) for role in models):
            self.ground_truth(models, owner, data, seed=0)

    @staticmethod
    def truth_role(models: Mapping[str, Any], role: str) -> str:
        """Whose training images are ``role``'s members: its own when recorded, else the teacher's."""
        return role if (getattr(models[role], "provenance", None) or {}).get("train_members") else "teacher"

    def ground_truth(self, models: Mapping[str, Any], role: str, data: Any,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(images, labels, is_member): balanced members and non-members of ``role``'s (or the teacher's)
        training."""
        from robustdistill.audits.families.classifier import role_field

        owner = self.truth_role(models, role)
        truth = data.ground_truth(owner, models[owner], role_field(owner),
                                  "audit a model trained by `robustdistill train ddpm` on this data")
        population = truth.population
        kept = np.ones(len(truth.is_member), dtype=bool)
        if self.config.classes is not None:
            kept = np.isin(population.y.numpy(), self.config.classes)
        members, others = np.flatnonzero(truth.is_member & kept), np.flatnonzero(~truth.is_member & kept)
        n = min(len(members), len(others), self.config.members)
        if n < 8:
            raise UserInputError(self.where, f"only {n} members or non-members of the {owner}'s training to attack",
                                 "train the teacher on part of the train split (train_fraction < 1), leaving images "
                                 "it never saw")
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2023]))
        chosen = np.concatenate([rng.permutation(members)[:n], rng.permutation(others)[:n]])
        return population.x[chosen], population.y[chosen], truth.is_member[chosen]

    # --- running ----------------------------------------------------------------------------------------------
    def run(self, ctx: DiffusionContext, roles: tuple[str, ...]) -> UnitResult:
        from robustdistill.attacks.privacy import diffusion as mia

        (role,) = roles
        cfg = self.config
        model = ctx.models[role]
        images, labels, is_member = self.ground_truth(ctx.models, role, ctx.data, ctx.seed)
        cal_members, cal_others = mia.calibration_split(int(is_member.sum()), int((~is_member).sum()), ctx.seed)
        calibration = np.zeros(len(is_member), dtype=bool)
        calibration[np.flatnonzero(is_member)[cal_members]] = True
        calibration[np.flatnonzero(~is_member)[cal_others]] = True
        one_step = getattr(model, "one_step_t", None) is not None
        base = self.row_params(members=int(is_member.sum()), nonmembers=int((~is_member).sum()),
                               calibration=int(calibration.sum()),
                               ground_truth="own" if self.truth_role(ctx.models, role) == role else "teacher")
        rows: list[dict[str, Any]] = []
        batch = min(ctx.batch_size, 512)
        for attack in cfg.attacks:
            if one_step and attack in WHITE_BOX:
                rows += self._empty(role, attack, {**base, "note": NOT_APPLICABLE})
                continue
            scores = self._scores(mia, ctx, role, attack, images, labels, batch)
            result = mia.calibrated(scores, is_member, calibration)
            params = {**base, **({"t": result.t} if result.t is not None else {}), "threshold": result.threshold}
            rows += self._rows(role, attack, result, params)
            if attack == "loss":
                for t, auc in mia.sweep_auc(scores, is_member, ~calibration).items():
                    n = int((~calibration).sum())
                    rows.append(value_row(self.name, role, f"loss_auc_t{t}", auc, n, {**base, "t": t},
                                          _auc_ci(auc, is_member[~calibration])))
        if one_step and "loss" in cfg.attacks:
            rows += [value_row(self.name, role, f"loss_auc_t{t}", None, 0, {**base, "t": t, "note": NOT_APPLICABLE})
                     for t in cfg.timesteps]
        return UnitResult(rows)

    def _scores(self, mia: Any, ctx: DiffusionContext, role: str, attack: str, images: torch.Tensor,
                labels: torch.Tensor, batch: int) -> dict[int | None, np.ndarray]:
        cfg, model = self.config, ctx.models[role]
        if attack == "loss":
            return {t: mia.loss_scores(model, images, labels, t, seed=ctx.seed, repeats=cfg.repeats, batch_size=batch)
                    for t in cfg.timesteps}
        if attack == "pia":
            return {t: mia.pia_scores(model, images, labels, t, p=cfg.pia_p, batch_size=batch) for t in cfg.timesteps}
        if attack == "secmi":
            return {cfg.secmi_t: mia.secmi_scores(model, images, labels, cfg.secmi_t, cfg.secmi_interval,
                                                  batch_size=batch)}
        samples = ctx.samples(role, cfg.per_class, cfg.steps)
        return {None: mia.nearest_scores(images, labels, samples.images, samples.labels)}

    def _rows(self, role: str, attack: str, result: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        m = result.metrics
        n = m.n_members + m.n_nonmembers
        rows = [value_row(self.name, role, f"{attack}_auc", m.auc, n, params, m.auc_ci95)]
        for fpr, metric in TPR_METRICS.items():
            tpr = m.tpr_at[fpr]
            rows.append(value_row(self.name, role, f"{attack}_{metric}", tpr.value, m.n_members,
                                  params if tpr.resolvable else {**params, "note": tpr.note}, tpr.ci95))
        rows.append(value_row(self.name, role, f"{attack}_accuracy", result.accuracy, n, params))
        return rows

    def _empty(self, role: str, attack: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [value_row(self.name, role, f"{attack}_{metric}", None, 0, params) for metric in PER_ATTACK]


def _auc_ci(auc: float, is_member: np.ndarray) -> list[float]:
    from robustdistill.attacks.privacy.metrics import auc_interval

    return auc_interval(auc, int(is_member.sum()), int((~is_member).sum()))
