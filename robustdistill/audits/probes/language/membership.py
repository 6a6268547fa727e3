"""The ``lm-mia`` probe: membership inference against the teacher's fine-tuning data, on every model.

Ground truth is the TEACHER's: the example ids it was fine-tuned on (``train_members`` in its robustdistill.json,
written by ``robustdistill train``) resolved against the suite's instruction pool, against the evaluation split's
examples of the same families as non-members (one pool, a random split: the condition under which the attack
measures membership, not a distribution shift). Each model - teacher, student, any extra one - is attacked with
those members ("Students Parrot Their Teachers", Jagielski et al. 2023: does the student leak what only the teacher
saw?). Members and non-members are balanced within each task family, drawn with the suite's seed. Rows per model and attack::

    <role>.lm-mia.<attack>_auc, <attack>_balanced_accuracy, <attack>_tpr_at_1pct_fpr, <attack>_tpr_at_0_1pct_fpr

with attack one of loss, zlib, min_k, min_k_plus_plus, reference (the reference attack needs ``reference``: the
role of an extra model, e.g. the base model before fine-tuning, which then gets no unit of its own). A TPR at an FPR
the non-members cannot resolve (fewer than 1/FPR of them) has no value and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from robustdistill.attacks.privacy.metrics import TPR_METRICS
from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, value_row
from robustdistill.audits.probes.language.context import LanguageContext, role_field
from robustdistill.errors import UserInputError

ATTACK_METRIC = {"loss": "loss", "zlib": "zlib", "min-k": "min_k", "min-k++": "min_k_plus_plus",
                 "reference": "reference"}
PER_ATTACK = ("auc", "balanced_accuracy", *TPR_METRICS.values())


class LMMiaConfig(ProbeConfig):
    attacks: list[str] = Field(default_factory=lambda: ["loss", "zlib", "min-k", "min-k++"], min_length=1)
    k: float = Field(0.2, gt=0, le=1)
    reference: str | None = None
    members: int | None = Field(None, ge=2, le=1_000_000)


@PROBES.register("lm-mia")
class LMMembershipProbe(Probe):
    """Membership inference (loss, zlib, min-k%, min-k%++, reference model) with the teacher's members as ground
    truth, on every model; AUC and TPR at low FPR with 95% intervals."""

    kind = "lm-mia"
    family = "language-model"
    group = "lm-privacy"
    config_class: ClassVar[type[ProbeConfig]] = LMMiaConfig
    metrics = tuple(f"{a}_{m}" for a in ATTACK_METRIC.values() for m in PER_ATTACK)
    needs_threat_model = False
    config: LMMiaConfig

    def validate(self) -> None:
        unknown = [a for a in self.config.attacks if a not in ATTACK_METRIC]
        if unknown:
            raise UserInputError(f"{self.where}.attacks", f"unknown attack {unknown[0]!r}",
                                 f"use some of: {', '.join(ATTACK_METRIC)}")
        if ("reference" in self.config.attacks) != (self.config.reference is not None):
            raise UserInputError(f"{self.where}.reference", "the reference attack and a reference model go together",
                                 "set reference = '<extra role>' and list 'reference' in attacks, or neither")

    def params(self) -> dict[str, Any]:
        return {"attacks": list(self.config.attacks), "k": self.config.k, "reference": self.config.reference,
                "members": self.config.members}

    def produces(self, role: str) -> tuple[str, ...]:
        return tuple(f"{ATTACK_METRIC[a]}_{m}" for a in self.config.attacks for m in PER_ATTACK)

    def units(self, roles: list[str]) -> list[tuple[str, ...]]:
        return [(role,) for role in roles if role != self.config.reference]

    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        if self.config.reference is not None and self.config.reference not in models:
            raise UserInputError(f"{self.where}.reference", f"no model with role {self.config.reference!r}",
                                 "add it under [pipeline.extra], e.g. reference = 'checkpoints/lm-base'")
        teacher = models.get("teacher")
        members = (getattr(teacher, "provenance", None) or {}).get("train_members")
        if not members:
            raise UserInputError(role_field("teacher"), "records no training members (train_members in its "
                                 "robustdistill.json), so there is no ground truth to attack",
                                 "audit a teacher trained by `robustdistill train`, or drop the lm-mia probe")

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        self.members(models["teacher"], data)

    def members(self, teacher: Any, data: Any) -> Any:
        """The teacher's training members, resolved against the suite's data (refused when that is other data)."""
        member_ids = set(teacher.provenance["train_members"])
        pool = data.pool
        members = pool.select(i for i in pool.ids if i in member_ids)
        recorded = (teacher.provenance.get("data") or {})
        if len(members) < len(member_ids) or members.fingerprint != recorded.get("fingerprint", members.fingerprint):
            # Same ids, other text (another seed, noise or file) would be scored as members silently.
            spec = recorded.get("spec") or {}
            settings = ", ".join(f"{k} = {v!r}" for k, v in spec.items() if v is not None and k in
                                 ("kind", "n", "seed", "families", "noise", "split_seed", "val_fraction",
                                  "test_fraction"))
            raise UserInputError("data", "is not the data the teacher was fine-tuned on (its training members "
                                 "differ from the suite's examples with those ids)",
                                 f"give [data] the teacher's settings ({settings or 'see its robustdistill.json'})")
        return members

    def ground_truth(self, ctx: LanguageContext) -> tuple[Any, Any]:
        members = self.members(ctx.models["teacher"], ctx.data)
        member_ids = set(members.ids)
        # As many members as non-members FROM EACH FAMILY: a family mix that differs between the two sides would be
        # scored as membership (task families differ in how easy their answers are).
        outside = [e for e in ctx.examples if e.id not in member_ids]
        per_family = {f: (members.where(family=f).ids, [e.id for e in outside if e.family == f])
                      for f in members.families()}
        counts = {f: min(len(m), len(o)) for f, (m, o) in per_family.items()}
        cap = self.config.members
        if cap is not None and sum(counts.values()) > cap:
            scale = cap / sum(counts.values())
            counts = {f: int(c * scale) for f, c in counts.items()}
        chosen_members, chosen_nonmembers = [], []
        for f, (m, o) in per_family.items():
            if counts[f]:
                chosen_members += members.select(m).subset(counts[f], seed=ctx.seed).ids
                chosen_nonmembers += ctx.examples.select(o).subset(counts[f], seed=ctx.seed).ids
        if len(chosen_members) < 2:
            raise UserInputError(self.where, f"only {len(chosen_members)} non-members of the teacher's task families "
                                 "in the evaluation split", "evaluate on a split the teacher was not trained on, with "
                                 "more samples")
        return members.select(chosen_members), ctx.examples.select(chosen_nonmembers)

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        from robustdistill.attacks.privacy.lm_scores import lm_membership

        (role,) = roles
        members, nonmembers = self.ground_truth(ctx)
        reference = ctx.models[self.config.reference] if self.config.reference else None
        attacks = [a for a in self.config.attacks if a != "reference"] or ["loss"]
        results = lm_membership(ctx.models[role], members, nonmembers, attacks, reference=reference, k=self.config.k,
                                batch_size=min(ctx.batch_size, 64))
        rows = []
        base = self.row_params(members=len(members), nonmembers=len(nonmembers), ground_truth="teacher")
        for attack, m in results.items():
            if attack not in self.config.attacks:
                continue
            name = ATTACK_METRIC[attack]
            n = m.n_members + m.n_nonmembers
            rows.append(value_row(self.name, role, f"{name}_auc", m.auc, n, base, m.auc_ci95))
            rows.append(value_row(self.name, role, f"{name}_balanced_accuracy", m.balanced_accuracy, n, base))
            for fpr, metric in TPR_METRICS.items():
                tpr = m.tpr_at[fpr]
                params = base if tpr.resolvable else {**base, "note": tpr.note}
                rows.append(value_row(self.name, role, f"{name}_{metric}", tpr.value, m.n_members, params, tpr.ci95))
        return UnitResult(rows)
