"""The ``attack`` probe: robust accuracy of each model under one attack or an AutoAttack ensemble, with the
adversarial examples of the report's grid (:func:`save_examples`), and :func:`default_examples_probe`, which picks
the attack probe whose examples fill that grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.image.context import (ImageContext, attack_cost, attack_outcome, resolve_attack,
                                                       run_attack)
from robustdistill.stats import proportion_row

# Preference for the attack whose examples go in the report's example grid (strongest first).
EXAMPLE_PREFERENCE = ("autoattack", "apgd-t", "apgd-ce", "fab-t", "cw-linf", "pgd", "cw-l2", "square", "fgsm")


class AttackConfig(ProbeConfig):
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)


@PROBES.register("attack")
class AttackProbe(Probe):
    """Robust accuracy under one attack (eps and norm from the threat model unless params set them).

    Rows: ``robust_accuracy`` (points correct both clean and under attack, over all points, so it never exceeds
    clean accuracy), ``success_rate`` (of the clean-correct points, the fraction the attack fooled) and, for L2
    attacks, ``median_l2`` (median L2 norm of the successful perturbations).
    """

    kind = "attack"
    family = "classifier"
    group = "image-attacks"
    config_class = AttackConfig
    metrics = ("robust_accuracy", "success_rate", "median_l2")
    retainable = True
    required_masks = ("clean", "robust")
    config: AttackConfig
    # AutoAttack also reports robust_accuracy_after_<stage> per component (cumulative, as the official code).

    def default_name(self) -> str:
        return self.config.attack

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        return True

    def validate(self) -> None:
        self.spec_ = resolve_attack(self.config.attack, self.config.params, self.threat_model, self.seed, self.where)
        # AutoAttack's components are fixed when it is built: they name its per-stage rows.
        self.stages = tuple(c.replace("-", "_") for c in getattr(self.spec_.build(), "attacks", ()))

    def produces(self, role: str) -> tuple[str, ...]:
        metrics = ["robust_accuracy", "success_rate"] + (["median_l2"] if self.norm == "l2" else [])
        return (*metrics, *(f"robust_accuracy_after_{stage}" for stage in self.stages))

    @property
    def attack(self) -> str:
        return self.config.attack

    @property
    def eps(self) -> Any:
        return self.spec_.kwargs.get("eps")

    @property
    def norm(self) -> str:
        return self.spec_.norm

    def params(self) -> dict[str, Any]:
        return self.spec_.describe()

    def expected_cost(self) -> float:
        return attack_cost(self.params())

    def row_params(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, **self.params(), **extra}

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        model = ctx.models[role]
        atk = self.spec_.build()
        x_adv = run_attack(atk, model, ctx.x, ctx.y, ctx.batch_size)
        clean, robust, adv_pred = attack_outcome(ctx, role, x_adv)
        fooled = clean & ~robust
        params = self.row_params()
        rows = [accuracy_row(self.name, role, "robust_accuracy", robust, params)]
        value, ci, n = proportion_row(fooled[clean])
        rows.append(value_row(self.name, role, "success_rate", value, n, params, ci))
        masks = {"robust": robust, "clean": clean}
        if self.norm == "l2":
            norms = (x_adv - ctx.x).flatten(1).norm(dim=1).numpy()[fooled]
            rows.append(value_row(self.name, role, "median_l2", float(np.median(norms)) if norms.size else None,
                                  int(norms.size), params))
        broken_by = getattr(atk, "audit_broken_by", None)
        if broken_by and len(broken_by) == ctx.n:
            # AutoAttack: which component broke each point (the black-box Square finding what the gradient
            # attacks missed is a masking signal), and robust accuracy after each stage.
            still = clean.copy()
            for component in getattr(atk, "attacks", ()):
                broke = np.array([b == component for b in broken_by])
                masks[f"broken_by_{component.replace('-', '_')}"] = broke
                still &= ~broke
                rows.append(accuracy_row(self.name, role, f"robust_accuracy_after_{component.replace('-', '_')}",
                                         still.copy(), {**params, "stage": component}))
        result = UnitResult(rows, masks={role: masks})
        if ctx.examples_probe == self.name and ctx.artifacts is not None and ctx.example_idx is not None:
            result.artifacts.append(save_examples(ctx, role, self.name, x_adv, adv_pred))
        return result


def save_examples(ctx: ImageContext, role: str, probe: str, x_adv: torch.Tensor, adv_pred: torch.Tensor) -> str:
    """Write artifacts/examples-<role>.npz (the runner merges the roles into examples.npz)."""
    from robustdistill.utils import atomic_path

    assert ctx.artifacts is not None and ctx.example_idx is not None
    idx = torch.as_tensor(ctx.example_idx, dtype=torch.long)
    name = f"examples-{role}.npz"
    with atomic_path(ctx.artifacts / name) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                index=idx.numpy(),
                clean=ctx.x[idx].numpy().astype(np.float32),
                labels=ctx.y[idx].numpy(),
                adv=x_adv[idx].numpy().astype(np.float32),
                pred_clean=ctx.clean_pred(role)[idx].numpy(),
                pred_adv=adv_pred[idx].numpy(),
                attack=np.array(probe),
            )
    return name


def default_examples_probe(probes: list[Probe]) -> str | None:
    """The attack probe whose examples fill the report's grid: the strongest attack in the suite."""
    candidates = [p for p in probes if isinstance(p, AttackProbe)]
    for attack in EXAMPLE_PREFERENCE:
        for probe in candidates:
            if probe.attack == attack:
                return probe.name
    return candidates[0].name if candidates else None
