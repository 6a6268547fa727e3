"""MTARD: Zhao, Yu, Sun, Wang, Ding, Wang and Ma, "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial
Distillation", ECCV 2022 (official code: zhaoshiji123/MTARD); and B-MTARD, its extension: Zhao, Wang and Wei,
"Mitigating Accuracy-Robustness Trade-off via Balanced Multi-Teacher Adversarial Distillation", IEEE TPAMI 2024
(official code: zhaoshiji123/MTARD-extension).

A student learns from two frozen teachers at once: a clean teacher on the clean inputs and a robust (adversarially
trained) teacher on the student's own adversarial examples,

    L = w_adv * KL(softmax(T_rob(x') / tau_adv) || softmax(S(x')))
      + w_nat * KL(softmax(T_nat(x) / tau_nat) || softmax(S(x)))

with x' = PGD maximising CE(S(x'), y) against the student. The teacher weights are re-balanced after every batch
so that neither teacher's loss is left behind (Normalization Loss Balance), and in B-MTARD the two teachers'
temperatures are also adapted so that their softened distributions carry the same entropy (Entropy-Based Balance).

Deviation from the official code: the official scripts keep the checkpoint with the best (clean + PGD-20) / 2
accuracy measured ON THE TEST SET. Here the same criterion (``select_metric = "mean"``) is measured on the held-out
validation split by the base :class:`~robustdistill.trainers.base.Trainer`; the test split is never looked at.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.data import ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier
from robustdistill.trainers.adversarial import KLReduction, forward_both, maximise, teacher_student_kl
from robustdistill.trainers.base import TRAINERS, Trainer
from robustdistill.trainers.config import STRICT, SelectMetric, TrainConfig
from robustdistill.trainers.teachers import check_teacher, ensure_teacher, inference_forward, load_teacher
from robustdistill.utils import seed_everything

log = logging.getLogger(__name__)

# The official scripts multiply both balance learning rates by 0.1 at every learning-rate milestone.
BALANCE_DECAY = 0.1


# --- the balances: small, pure, testable on their own ---------------------------------------------------------------


class NormalizationLossBalance:
    """Normalization Loss Balance of MTARD (ECCV 2022, Eq. 9-10).

    With r_k = L_k(t) / L_k(0) (L_k(0): the loss of the first batch), the clean teacher's weight moves toward its
    share of the relative losses, w_nat <- w_nat - eta * (w_nat - r_nat / (r_adv + r_nat)), and w_adv = 1 - w_nat.
    The teacher whose loss has fallen less (relative to where it started) gets more weight. Start 0.5 / 0.5,
    eta = 0.025. The weights always sum to 1 and stay in [0, 1] (a convex step toward a point of [0, 1]).
    """

    def __init__(self, lr: float = 0.025, w_adv: float = 0.5, w_nat: float = 0.5) -> None:
        self.lr = lr
        self.w_adv = w_adv
        self.w_nat = w_nat
        self.initial_adv: float | None = None
        self.initial_nat: float | None = None

    def ratios(self, loss_adv: float, loss_nat: float) -> tuple[float, float]:
        """(r_adv, r_nat); the first call fixes L_k(0)."""
        if self.initial_adv is None or self.initial_nat is None:
            self.initial_adv, self.initial_nat = float(loss_adv), float(loss_nat)
        # A zero initial loss (teacher and student already identical) would divide by zero: treat it as "no progress
        # to measure", ratio 1.
        r_adv = loss_adv / self.initial_adv if self.initial_adv > 0 else 1.0
        r_nat = loss_nat / self.initial_nat if self.initial_nat > 0 else 1.0
        return float(r_adv), float(r_nat)

    def update(self, loss_adv: float, loss_nat: float) -> tuple[float, float]:
        """One step from this batch's (unweighted) losses; returns the new (w_adv, w_nat) to weight them with."""
        r_adv, r_nat = self.ratios(loss_adv, loss_nat)
        total = r_adv + r_nat
        if total > 0 and math.isfinite(total):
            self.w_nat = self.w_nat - self.lr * (self.w_nat - r_nat / total)
            self.w_adv = 1.0 - self.w_nat
        return self.w_adv, self.w_nat

    def state_dict(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "w_adv": float(self.w_adv),
            "w_nat": float(self.w_nat),
            "initial_loss_adv": nan if self.initial_adv is None else float(self.initial_adv),
            "initial_loss_nat": nan if self.initial_nat is None else float(self.initial_nat),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_adv, self.w_nat = float(state["w_adv"]), float(state["w_nat"])
        initial_adv, initial_nat = float(state["initial_loss_adv"]), float(state["initial_loss_nat"])
        self.initial_adv = None if math.isnan(initial_adv) else initial_adv
        self.initial_nat = None if math.isnan(initial_nat) else initial_nat


class ExtendedLossBalance(NormalizationLossBalance):
    """The loss balance of B-MTARD (TPAMI 2024): BOTH weights move toward their teacher's share r_k / (r_adv + r_nat),
    w_k <- w_k - eta * (w_k - r_k / sum(r)), are clipped at 0 and renormalised to sum to 1.

    (The official code normalises r_k by their mean first; the mean cancels in r_k / sum(r).)
    """

    def update(self, loss_adv: float, loss_nat: float) -> tuple[float, float]:
        r_adv, r_nat = self.ratios(loss_adv, loss_nat)
        total = r_adv + r_nat
        if not (total > 0 and math.isfinite(total)):
            return self.w_adv, self.w_nat
        w_adv = max(0.0, self.w_adv - self.lr * (self.w_adv - r_adv / total))
        w_nat = max(0.0, self.w_nat - self.lr * (self.w_nat - r_nat / total))
        norm = w_adv + w_nat
        if norm > 0:
            self.w_adv, self.w_nat = w_adv / norm, w_nat / norm
        return self.w_adv, self.w_nat


def mean_p_log_p(logits: torch.Tensor, temperature: float) -> float:
    """H = mean over batch and classes of p * log p, p = softmax(logits / temperature): minus the entropy over C.
    (The official code takes log(p + 1e-5); the exact log-softmax is used here.)"""
    log_p = torch.log_softmax(logits.detach().float() / temperature, dim=1)
    return float((log_p.exp() * log_p).mean())


class EntropyBalance:
    """Entropy-Based Balance of B-MTARD (TPAMI 2024): adapts the two teachers' temperatures so that their softened
    distributions carry the same entropy.

    Each batch, at the current temperatures, H_k = mean(p_k log p_k) (<= 0, minus the entropy over C), then
    tau_adv <- tau_adv - eta * sign(H_adv / H_nat - 1) and tau_nat <- tau_nat - eta * sign(H_nat / H_adv - 1),
    clipped to [tau_min, tau_max] = [1, 10]; both start at 1; eta = 0.001.

    Because both H are <= 0, H_adv / H_nat > 1 means the robust teacher's distribution has the HIGHER entropy: its
    temperature goes down (sharpening it) and the clean teacher's goes up (softening it), toward equal entropy.
    The sign is taken as sign(E_adv - E_nat) with E = -H, which equals the rule wherever the ratio is defined and
    is 0 (no move) when both distributions are one-hot (0 / 0 in the ratio).
    """

    def __init__(
        self, lr: float = 0.001, tau_adv: float = 1.0, tau_nat: float = 1.0, tau_min: float = 1.0, tau_max: float = 10.0
    ) -> None:
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        self.lr = lr
        self.tau_min, self.tau_max = tau_min, tau_max
        self.tau_adv = self._clip(tau_adv)
        self.tau_nat = self._clip(tau_nat)

    def _clip(self, tau: float) -> float:
        return float(min(self.tau_max, max(self.tau_min, tau)))

    def update_from_entropies(self, h_adv: float, h_nat: float) -> tuple[float, float]:
        """One step given H_k = mean(p log p) of each teacher at the current temperatures; returns the new taus."""
        sign = float(torch.sign(torch.tensor((-h_adv) - (-h_nat), dtype=torch.float64)))  # sign(H_adv / H_nat - 1)
        self.tau_adv = self._clip(self.tau_adv - self.lr * sign)
        self.tau_nat = self._clip(self.tau_nat + self.lr * sign)  # sign(H_nat / H_adv - 1) = -sign(H_adv / H_nat - 1)
        return self.tau_adv, self.tau_nat

    def update(self, teacher_adv_logits: torch.Tensor, teacher_nat_logits: torch.Tensor) -> tuple[float, float]:
        """One step from the teachers' logits of this batch (softened at the current taus)."""
        h_adv = mean_p_log_p(teacher_adv_logits, self.tau_adv)
        h_nat = mean_p_log_p(teacher_nat_logits, self.tau_nat)
        return self.update_from_entropies(h_adv, h_nat)

    def state_dict(self) -> dict[str, float]:
        return {"tau_adv": float(self.tau_adv), "tau_nat": float(self.tau_nat)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau_adv, self.tau_nat = float(state["tau_adv"]), float(state["tau_nat"])


def mtard_kl_terms(
    student_adv_logits: torch.Tensor,
    robust_teacher_adv_logits: torch.Tensor,
    student_nat_logits: torch.Tensor,
    clean_teacher_nat_logits: torch.Tensor,
    *,
    tau_adv: float = 1.0,
    tau_nat: float = 1.0,
    reduction: KLReduction = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(softmax(T_rob(x')/tau_adv) || softmax(S(x'))), KL(softmax(T_nat(x)/tau_nat) || softmax(S(x)))):
    the temperature softens the teacher only, the student stays at temperature 1, no tau^2 factor."""
    loss_adv = teacher_student_kl(
        robust_teacher_adv_logits, student_adv_logits, teacher_temperature=tau_adv, reduction=reduction
    )
    loss_nat = teacher_student_kl(
        clean_teacher_nat_logits, student_nat_logits, teacher_temperature=tau_nat, reduction=reduction
    )
    return loss_adv, loss_nat


# --- configs ---------------------------------------------------------------------------------------------------------


@dataclass(config=STRICT)
class MTARDConfig(TrainConfig):
    """MTARD (Zhao et al., ECCV 2022), official CIFAR-10 settings.

    Teachers: ``robust_teacher`` (TRADES WRN-34-10 in the paper) sees the student's adversarial examples,
    ``clean_teacher`` (a standard ResNet-56 in the paper) sees the clean inputs; each is trained first from its
    ``*_recipe`` when the checkpoint is missing. Attack: PGD-10 on CE(S(x'), y) against the student with BatchNorm
    in eval mode, step 2/255 (eps / 4) in the L-inf ball of 8/255 from x + 0.001 N(0, 1). Loss: mean-KL (over batch x
    classes, the official ``KLDivLoss`` default) of each teacher against the student at temperature 1, no tau^2;
    ``kl_scale`` multiplies both terms (10 in the official CIFAR-100 script). Normalization Loss Balance with
    eta = ``balance_lr`` = 0.025 from 0.5 / 0.5, eta x0.1 at every lr milestone. SGD 0.1, momentum 0.9, wd 2e-4,
    batch 128, 300 epochs, lr x0.1 at 215 / 260 / 285, random crop + flip, no input normalisation.

    Selection: best (clean + PGD-20) / 2 as in the official code, but on the VALIDATION split (the official code
    selects on the test set).
    """

    PATH_FIELDS = ("clean_teacher", "clean_teacher_recipe", "robust_teacher", "robust_teacher_recipe")

    clean_teacher: str = ""
    clean_teacher_recipe: str | None = None
    robust_teacher: str = ""
    robust_teacher_recipe: str | None = None
    kl_reduction: KLReduction = "mean"
    kl_scale: float = Field(1.0, gt=0)
    balance_lr: float = Field(0.025, ge=0, le=1)
    # The teachers' temperatures: fixed in MTARD (1 in the official code); B-MTARD starts from them and adapts them.
    tau_adv: float = Field(1.0, gt=0)
    tau_nat: float = Field(1.0, gt=0)
    weight_decay: float = Field(2e-4, ge=0)
    epochs: int = Field(300, ge=1)
    lr_milestones: list[int] = Field(default_factory=lambda: [215, 260, 285])
    select_metric: SelectMetric = "mean"
    val_attack_steps: int = Field(20, ge=1)


@dataclass(config=STRICT)
class BMTARDConfig(MTARDConfig):
    """B-MTARD (Zhao et al., TPAMI 2024): MTARD's settings, with the extension's loss balance (both weights move,
    clipped >= 0, renormalised) and the Entropy-Based Balance of the teachers' temperatures: tau_adv and tau_nat start
    at 1, move by ``tau_lr`` = 0.001 per batch, clipped to [``tau_min``, ``tau_max``] = [1, 10]; ``tau_lr`` and
    ``balance_lr`` x0.1 at every lr milestone. Selected on val, not on the test set as in the official code."""

    tau_lr: float = Field(0.001, ge=0)
    tau_min: float = Field(1.0, gt=0)
    tau_max: float = Field(10.0, gt=0)


# --- trainers --------------------------------------------------------------------------------------------------------


@TRAINERS.register("mtard")
class MTARDTrainer(Trainer):
    """Multi-teacher adversarial robustness distillation with Normalization Loss Balance (Zhao et al., ECCV 2022)."""

    config_class = MTARDConfig
    method = "mtard"
    # The teacher balance is updated from each batch's KL terms inside batch_loss: one process only (a shard's
    # terms would move each process's balance apart).
    data_parallel = False

    clean_teacher: Classifier
    robust_teacher: Classifier

    def __init__(self, config: MTARDConfig) -> None:
        super().__init__(config)
        self.reset_balance()

    def reset_balance(self) -> None:
        """Fresh balance state (weights 0.5 / 0.5, no L_k(0) yet); a resumed run then loads the saved one."""
        self.balance = self.make_balance()
        self.entropy = self.make_entropy_balance()
        self._state_restored = False  # set by load_extra_state (resume)
        self._started = False
        self._epoch_sums: dict[str, float] = {}
        self._epoch_batches = 0

    def make_balance(self) -> NormalizationLossBalance:
        return NormalizationLossBalance(self.config.balance_lr)

    def make_entropy_balance(self) -> EntropyBalance | None:
        return None  # MTARD: fixed temperatures

    # --- inputs and teachers ---
    def check_inputs(self) -> None:
        for name in ("clean_teacher", "robust_teacher"):
            check_teacher(getattr(self.config, name), getattr(self.config, f"{name}_recipe"), field=name)

    def _teacher(self, name: str, train: ImageSplit) -> Classifier:
        cfg = self.config
        path = ensure_teacher(getattr(cfg, name), getattr(cfg, f"{name}_recipe"), field=name)
        self.parent(name, path)
        teacher = load_teacher(path, field=name).to(self.device)
        if teacher.num_classes != train.num_classes:
            raise UserInputError(name, f"the teacher has {teacher.num_classes} classes, the data {train.num_classes}",
                                 "use a teacher trained on this dataset")
        return teacher

    def prepare(self, train: ImageSplit) -> None:
        self.reset_balance()
        self.clean_teacher = self._teacher("clean_teacher", train)
        self.robust_teacher = self._teacher("robust_teacher", train)
        example = train.x[: self.config.batch_size].to(self.device)
        self.clean_teacher_logits = inference_forward(self.clean_teacher, example)
        self.robust_teacher_logits = inference_forward(self.robust_teacher, example)
        # Training a missing teacher draws from the global random stream: reseed (always, so both cases agree) so
        # that the student starts from the same weights whether its teachers existed or were trained just now.
        seed_everything(self.config.seed)

    # --- the temperatures (fixed here; adapted by B-MTARD) ---
    def temperatures(self) -> tuple[float, float]:
        if self.entropy is not None:
            return self.entropy.tau_adv, self.entropy.tau_nat
        return self.config.tau_adv, self.config.tau_nat

    # --- one batch ---
    def student_adversarial(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """PGD on CE(S(x'), y) against the student from x + 0.001 N(0, 1), BatchNorm in ``attack_bn_mode``."""
        cfg = self.config
        return maximise(
            model, lambda z: nn.functional.cross_entropy(model(z), y), x,
            eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps, norm=cfg.norm,
            start="normal", bn_mode=cfg.attack_bn_mode, generator=generator,
        )

    def batch_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        x_adv = self.student_adversarial(model, x, y, generator)
        model.train()
        teacher_adv_logits = self.robust_teacher_logits(x_adv)
        teacher_nat_logits = self.clean_teacher_logits(x)
        student_adv_logits, student_nat_logits = forward_both(model, x_adv, x)
        tau_adv, tau_nat = self.temperatures()
        loss_adv, loss_nat = mtard_kl_terms(
            student_adv_logits, teacher_adv_logits, student_nat_logits, teacher_nat_logits,
            tau_adv=tau_adv, tau_nat=tau_nat, reduction=cfg.kl_reduction,
        )
        if self.entropy is not None:  # B-MTARD: entropies at the taus used in this batch; new taus for the next one
            self.entropy.update(teacher_adv_logits, teacher_nat_logits)
        # The balance is fed this batch's unweighted, unscaled KL terms, detached (official code: ``kl_Loss.item()``
        # of the mean-KL before weighting); the weights it returns weight this same batch's loss, as in the official
        # code. r_k = L_k(t) / L_k(0) is invariant to kl_scale.
        kl_adv, kl_nat = float(loss_adv.detach()), float(loss_nat.detach())
        w_adv, w_nat = self.balance.update(kl_adv, kl_nat)
        self._accumulate(w_adv=w_adv, w_nat=w_nat, tau_adv=tau_adv, tau_nat=tau_nat, kl_adv=kl_adv, kl_nat=kl_nat)
        loss = cfg.kl_scale * (w_adv * loss_adv + w_nat * loss_nat)
        return loss, student_nat_logits

    # --- per-epoch records ---
    def history_keys(self) -> tuple[str, ...]:
        """Per-epoch means recorded in the history: the teacher weights and the unweighted KL terms."""
        return ("w_adv", "w_nat", "kl_adv", "kl_nat")

    def _accumulate(self, **values: float) -> None:
        for key, value in values.items():
            self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + float(value)
        self._epoch_batches += 1

    def set_epoch_rates(self, epoch: int) -> None:
        """eta x0.1 at every lr milestone passed before this (0-based) epoch, as the official scripts do."""
        decay = BALANCE_DECAY ** sum(1 for m in self.config.lr_milestones if m <= epoch)
        self.balance.lr = self.config.balance_lr * decay

    def train_epoch(
        self, model: Classifier, optimizer: torch.optim.Optimizer, train: ImageSplit, epoch: int
    ) -> dict[str, float]:
        if not self._started:
            self._started = True
            if epoch > 0 and not self._state_restored:
                # Resuming, but the base trainer did not hand back the balance state: continuing would silently
                # restart the weights (and temperatures) from their initial values.
                raise UserInputError("--resume", "this version cannot restore MTARD's teacher-balance state",
                                     "delete the .partial folder to start over")
        self.set_epoch_rates(epoch)
        self._epoch_sums, self._epoch_batches = {}, 0
        record = super().train_epoch(model, optimizer, train, epoch)
        n = max(1, self._epoch_batches)
        # The mean over the epoch's batches of the weights (and temperatures) that weighted each batch's loss.
        record |= {key: float(self._epoch_sums.get(key, float("nan")) / n) for key in self.history_keys()}
        log.debug("%s epoch %d teacher balance %s", self.method, epoch + 1, self.extra_state())
        return record

    # --- resumable state (called by Trainer._save_state / _load_state) ---
    def extra_state(self) -> dict[str, float | list[float]]:
        state: dict[str, float | list[float]] = dict(self.balance.state_dict())
        if self.entropy is not None:
            state |= self.entropy.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.balance.load_state_dict(state)
        if self.entropy is not None:
            self.entropy.load_state_dict(state)
        self._state_restored = True

    def extra_provenance(self) -> dict[str, Any]:
        """The final balance state (the values after the last batch)."""
        final: dict[str, float | None] = {
            "w_adv": self.balance.w_adv,
            "w_nat": self.balance.w_nat,
            "initial_loss_adv": self.balance.initial_adv,
            "initial_loss_nat": self.balance.initial_nat,
        }
        tau_adv, tau_nat = self.temperatures()
        final |= {"tau_adv": tau_adv, "tau_nat": tau_nat}
        return {"teacher_balance": final}


@TRAINERS.register("b-mtard")
class BMTARDTrainer(MTARDTrainer):
    """B-MTARD (Zhao et al., TPAMI 2024): MTARD with the extension's loss balance and the Entropy-Based Balance
    of the teachers' temperatures."""

    config_class = BMTARDConfig
    method = "b-mtard"

    def __init__(self, config: BMTARDConfig) -> None:
        if config.tau_min > config.tau_max:
            raise UserInputError("tau_min", f"{config.tau_min} is above tau_max = {config.tau_max}",
                                 "set tau_min <= tau_max")
        super().__init__(config)

    def make_balance(self) -> NormalizationLossBalance:
        return ExtendedLossBalance(self.config.balance_lr)

    def make_entropy_balance(self) -> EntropyBalance | None:
        cfg = self.config
        return EntropyBalance(cfg.tau_lr, cfg.tau_adv, cfg.tau_nat, cfg.tau_min, cfg.tau_max)

    def history_keys(self) -> tuple[str, ...]:
        return (*super().history_keys(), "tau_adv", "tau_nat")

    def set_epoch_rates(self, epoch: int) -> None:
        super().set_epoch_rates(epoch)
        assert self.entropy is not None
        decay = BALANCE_DECAY ** sum(1 for m in self.config.lr_milestones if m <= epoch)
        self.entropy.lr = self.config.tau_lr * decay
