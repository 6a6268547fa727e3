"""The ``masking`` probe: gradient-masking checks on each model (more steps, restarts, a large epsilon, rescaled
logits, a black-box attack). The comparisons and their tolerances are in :mod:`robustdistill.audits.masking`; this
module runs the attacks they need and turns the failed checks into flags and rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from robustdistill import attacks
from robustdistill.audits import masking
from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.image.context import FORWARD, ImageContext, ScaledLogits, attack_outcome, run_attack
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_QUERIES, check_eps, check_int, check_restarts, check_steps

class MaskingConfig(ProbeConfig):
    """Settings of the gradient-masking checks (defaults: Carlini et al. 2019; Croce & Hein 2020)."""

    steps: int = Field(10, ge=1)
    more_steps: int = Field(100, ge=1)
    restarts: int = Field(5, ge=1)
    large_eps: float | None = Field(None, gt=0)
    large_eps_max_accuracy: float = Field(0.1, ge=0, le=1)
    scales: list[float] = Field(default_factory=lambda: [0.01, 100.0])
    square_queries: int = Field(1000, ge=0)
    tolerance: float = Field(masking.TOLERANCE, ge=0, le=1)
    loss_tolerance: float = Field(masking.LOSS_TOLERANCE, ge=0, le=1)


@PROBES.register("masking")
class MaskingProbe(Probe):
    """Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019), each a flag with its evidence:

    (a) an iterative attack (PGD) weaker than single-step FGSM; (b) a black-box attack (Square) finding examples
    the gradient attacks missed; (c) robust accuracy not near 0 at a very large eps (0.5 L-inf: every image can
    be moved to flat grey); (d) accuracy still falling as steps or restarts grow (PGD-``steps`` vs
    PGD-``more_steps`` vs ``restarts`` restarts); (e) numbers that change when the logits are rescaled (CE-PGD on
    the logits x ``scales``) or when the CE loss is swapped for the CW margin (defensive distillation's
    signature). Differences count only beyond two paired standard errors and ``tolerance`` (``loss_tolerance`` for
    (e): on a healthy adversarially trained model the CW margin can beat cross-entropy by several points).
    """

    kind = "masking"
    family = "classifier"
    group = "masking"
    config_class = MaskingConfig
    metrics = ("single_step_robust_accuracy", "pgd_robust_accuracy", "pgd_more_steps_robust_accuracy",
               "pgd_restarts_robust_accuracy", "large_eps_robust_accuracy", "scaled_logits_robust_accuracy",
               "cw_loss_robust_accuracy", "worst_case_robust_accuracy", "checks_failed")
    config: MaskingConfig

    def validate(self) -> None:
        for i, scale in enumerate(self.config.scales):
            # Beyond 1e6 either way the scaled logits overflow or vanish in float32: a check of nothing.
            if not (math.isfinite(scale) and 1e-6 <= scale <= 1e6):
                raise UserInputError(f"{self.where}.scales[{i}]", f"must be a number in [1e-6, 1e6], got {scale}", "e.g. 0.01")
        cfg = self.config
        check_steps(f"{self.where}.steps", cfg.steps)
        check_steps(f"{self.where}.more_steps", cfg.more_steps)
        check_restarts(f"{self.where}.restarts", cfg.restarts)
        check_int(f"{self.where}.square_queries", cfg.square_queries, 0, MAX_QUERIES)
        if cfg.large_eps is not None:
            check_eps(f"{self.where}.large_eps", cfg.large_eps, self.threat_model.norm)
        if self.threat_model.eps <= 0:
            raise UserInputError("threat_model.eps", "the masking checks need eps > 0", "set a positive eps")

    @classmethod
    def robustness_claim(cls, metric: str) -> bool:
        return True

    def produces(self, role: str) -> tuple[str, ...]:
        # worst_case runs Square on top of the gradient attacks: no Square queries, no worst case.
        return tuple(m for m in self.metrics if m != "worst_case_robust_accuracy" or self.config.square_queries)

    def gate_metrics(self, role: str) -> tuple[str, ...]:
        return tuple(m for m in self.produces(role) if m != "scaled_logits_robust_accuracy")  # one row per scale

    def expected_cost(self) -> float:
        cfg = self.config
        return (cfg.steps * (3 + len(cfg.scales)) + cfg.more_steps + cfg.restarts * cfg.steps
                + cfg.square_queries * FORWARD)

    def params(self) -> dict[str, Any]:
        return {"eps": self.threat_model.eps, "norm": self.threat_model.norm,
                **self.config.model_dump(mode="json", exclude={"kind", "name", "models"})}

    def large_eps(self, x: torch.Tensor) -> float:
        if self.config.large_eps is not None:
            return self.config.large_eps
        if self.threat_model.norm == "linf":
            return 0.5
        return 0.5 * math.sqrt(x[0].numel())  # the L2 ball that holds flat grey from any image

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        cfg, tm = self.config, self.threat_model
        model = ctx.models[role]
        eps, norm, seed = tm.eps, tm.norm, self.seed

        def pgd(steps: int, *, restarts: int = 1, loss: str = "ce", radius: float = eps) -> attacks.Attack:
            return attacks.create("pgd", eps=radius, norm=norm, steps=steps, alpha=2.5 * radius / steps,
                                  restarts=restarts, loss=loss, seed=seed)

        def robust_under(atk: attacks.Attack, target: nn.Module = model) -> np.ndarray:
            x_adv = run_attack(atk, target, ctx.x, ctx.y, ctx.batch_size)
            return attack_outcome(ctx, role, x_adv)[1]

        if norm == "linf":
            single = attacks.create("fgsm", eps=eps, seed=seed)
        else:  # the L2 fast gradient method: one normalised step of size eps, no random start
            single = attacks.create("pgd", eps=eps, norm="l2", steps=1, alpha=eps, random_start=False, seed=seed)
        large = self.large_eps(ctx.x)
        results: dict[str, np.ndarray] = {
            "single_step": robust_under(single),
            "pgd": robust_under(pgd(cfg.steps)),
            "pgd_more_steps": robust_under(pgd(cfg.more_steps)),
            "pgd_restarts": robust_under(pgd(cfg.steps, restarts=cfg.restarts)),
            "large_eps": robust_under(pgd(max(cfg.steps, 20), radius=large)),
            "cw_loss": robust_under(pgd(cfg.steps, loss="cw")),
        }
        scaled = {scale: robust_under(pgd(cfg.steps), ScaledLogits(model, scale)) for scale in cfg.scales}
        model.eval()
        if cfg.square_queries:
            # Square only where every gradient attack failed: the points it could add (check b), at a fraction of
            # the queries. The per-point worst case over all of this probe's attacks is reported with it.
            white = masking.white_box_robust(results, scaled)
            worst = white.copy()
            idx = torch.as_tensor(np.nonzero(white)[0], dtype=torch.long)
            if idx.numel():
                square = attacks.create("square", eps=eps, norm=norm, n_queries=cfg.square_queries, seed=seed)
                x_sub, y_sub = ctx.x[idx], ctx.y[idx]
                x_adv = run_attack(square, model, x_sub, y_sub, ctx.batch_size)
                worst[idx.numpy()] = (ctx.predict(role, x_adv, "adversarial inputs") == y_sub).numpy()
            results["worst_case"] = worst

        flags = masking.probe_checks(role, results, scaled, cfg.tolerance, cfg.large_eps_max_accuracy, eps, large,
                                     steps=cfg.steps, more_steps=cfg.more_steps, restarts=cfg.restarts,
                                     loss_tolerance=cfg.loss_tolerance)
        base = self.row_params()
        describe = {
            "single_step": {"attack": "fgsm" if norm == "linf" else "pgd", "steps": 1, "eps": eps},
            "pgd": {"attack": "pgd", "steps": cfg.steps, "eps": eps, "loss": "ce"},
            "pgd_more_steps": {"attack": "pgd", "steps": cfg.more_steps, "eps": eps, "loss": "ce"},
            "pgd_restarts": {"attack": "pgd", "steps": cfg.steps, "restarts": cfg.restarts, "eps": eps, "loss": "ce"},
            "large_eps": {"attack": "pgd", "steps": max(cfg.steps, 20), "eps": large, "loss": "ce"},
            "cw_loss": {"attack": "pgd", "steps": cfg.steps, "eps": eps, "loss": "cw"},
            "worst_case": {"attacks": "all of the above except large_eps, then square", "n_queries": cfg.square_queries,
                           "eps": eps},
        }
        rows = [accuracy_row(self.name, role, f"{key}_robust_accuracy", mask, {**base, "check": describe[key]})
                for key, mask in results.items()]
        for scale, mask in scaled.items():
            rows.append(accuracy_row(self.name, role, "scaled_logits_robust_accuracy", mask,
                                     {**base, "check": {"attack": "pgd", "steps": cfg.steps, "eps": eps, "loss": "ce",
                                                        "logit_scale": scale}}))
        rows.append(value_row(self.name, role, "checks_failed", float(len(flags)), ctx.n, base))
        masks = {key: mask for key, mask in results.items()} | {f"scaled_x{s:g}": m for s, m in scaled.items()}
        return UnitResult(rows, masks={role: masks}, flags=flags)
