"""Token-level distillation objectives for causal LMs: teacher distribution p, student distribution q.

Every objective takes student and teacher logits of shape (batch, seq, vocab) and a response mask of shape
(batch, seq) (True on response tokens; prompt tokens and padding False), and returns the divergence averaged
over the response tokens. The logits must already be aligned: position s holds the prediction of token s + 1 for
both models, on the same tokenizer (logit-level distillation needs a shared vocabulary).

Conventions shared by all objectives:

- Temperature T: both models' logits are divided by T before the softmax. The loss is NOT multiplied by T^2:
  the value returned is the divergence between the two tempered distributions, so it can be read, compared
  across objectives and checked by hand. Hinton et al.'s T^2 factor only keeps the gradient scale constant when T
  changes; the LM-distillation papers implemented here (MiniLLM, DistiLLM, GKD, TAID) train at T = 1, where the
  factor is 1, and TRL's GKDTrainer does not apply it either. A trainer that sweeps T multiplies by T^2 itself.
- Gradients flow through the student only: the teacher's logits are detached in every objective.
- Numerics: log-probabilities come from log_softmax in at least float32 (bf16/fp16 logits are upcast);
  mixtures of p and q are formed in log space with logsumexp, never as log(a * p + b * q).
- Only response tokens are computed at all (the masked positions are dropped before the softmax), so whatever
  the logits hold at prompt or padding positions, even inf or nan, cannot reach the loss or its gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from robustdistill.errors import UserInputError

__all__ = [
    "OBJECTIVES", "distillation_loss", "forward_kl", "generalized_jsd", "reverse_kl", "skew_forward_kl",
    "skew_reverse_kl", "taid", "taid_target",
]


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces.


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise UserInputError("temperature", f"must be a positive number, got {temperature!r}",
                             "use e.g. temperature = 1.0")


def _check_open_unit(field: str, value: float, example: str) -> None:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise UserInputError(field, f"must lie strictly between 0 and 1, got {value!r}",
                             f"use e.g. {field} = {example}")


def _check_closed_unit(field: str, value: float, example: str) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise UserInputError(field, f"must lie in [0, 1], got {value!r}", f"use e.g. {field} = {example}")


def _response_tokens(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered student and (detached) teacher logits at the response positions only: two (tokens, vocab) tensors."""
    _check_temperature(temperature)
    if student_logits.dim() != 3:
        raise UserInputError("student_logits", f"must be (batch, seq, vocab), got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape[:2] != student_logits.shape[:2]:
        raise UserInputError("teacher_logits", f"shape {tuple(teacher_logits.shape)} does not match the student's "
                             f"{tuple(student_logits.shape)}", "run both models on the same token ids")
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise UserInputError("teacher_logits", f"vocabulary of {teacher_logits.shape[-1]} tokens, the student's has "
                             f"{student_logits.shape[-1]}", "logit-level distillation needs a shared tokenizer; "
                             "use seq-kd (train on the teacher's generations) otherwise")
    if tuple(response_mask.shape) != tuple(student_logits.shape[:2]):
        raise UserInputError("response_mask", f"shape {tuple(response_mask.shape)}, expected (batch, seq) = "
                             f"{tuple(student_logits.shape[:2])}", "pass one flag per token: True on response tokens")
    keep = response_mask.to(device=student_logits.device, dtype=torch.bool)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16/fp16 up to float32; float64 stays
    student = student_logits[keep].to(dtype) / temperature
    teacher = teacher_logits.detach()[keep].to(dtype) / temperature
    return student, teacher


def _mean(per_token: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    # No response token in the batch: a zero that still belongs to the student's graph, so backward() works.
    if per_token.numel() == 0:
        return student.sum() * 0.0
    return per_token.mean()


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row, from log-probabilities: sum_v a_v (log a_v - log b_v)."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _log_mixture(log_a: torch.Tensor, weight_a: float, log_b: torch.Tensor) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space."""
    return torch.logsumexp(torch.stack([log_a + math.log(weight_a), log_b + math.log1p(-weight_a)]), dim=0)


# ----------------------------------------------------------------------------------------------------------------
# The objectives.


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(p || q): word-level KD (Hinton et al. 2015; Kim & Rush 2016). Mean-seeking: the student is
    pushed to cover every token the teacher gives mass to."""
    q, p = _response_tokens(student_logits, teacher_logits, response_mask, temperature)
    return _mean(_kl(p.log_softmax(-1), q.log_softmax(-1)), q)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(q || p), the divergence MiniLLM minimises (Gu et al., ICLR 2024). Mode-seeking.

    MiniLLM optimises the sequence-level reverse KL by policy gradient over sequences the student samples (with
    teacher-mixed sampling and length normalisation). This is the token-level form: the exact reverse KL of the
    next-token distributions at each response position of the given sequences; on student samples it is the
    single-step term of MiniLLM's gradient, without the future-reward part."""
    q, p = _response_tokens(student_logits, teacher_logits, response_mask, temperature)
    return _mean(_kl(q.log_softmax(-1), p.log_softmax(-1)), q)


def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
                    temperature: float = 1.0, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew KL (Ko et al., ICML 2024): SKL_a = KL(p || a p + (1 - a) q), a = 0.1.

    Mixing a little of the teacher into the student's side keeps the divergence finite and its gradient bounded
    where q is near zero; a -> 0 recovers forward KL."""
    return _skew(student_logits, teacher_logits, response_mask, temperature, alpha, on_student_side=False)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
                    temperature: float = 1.0, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew reverse KL: SRKL_a = KL(q || (1 - a) p + a q), a = 0.1; a -> 0 recovers reverse KL.

    (DistiLLM also replays student generations off-policy; that is the trainer's job, not this loss's.)"""
    return _skew(student_logits, teacher_logits, response_mask, temperature, alpha, on_student_side=True)


def _skew(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
          temperature: float, alpha: float, on_student_side: bool) -> torch.Tensor:
    """KL(x || alpha x + (1 - alpha) y) with x = p (skew KL) or x = q (skew reverse KL), y the other one."""
    _check_open_unit("alpha", alpha, "0.1")
    q, p = _response_tokens(student_logits, teacher_logits, response_mask, temperature)
    log_x, log_y = (q.log_softmax(-1), p.log_softmax(-1)) if on_student_side else (p.log_softmax(-1), q.log_softmax(-1))
    return _mean(_kl(log_x, _log_mixture(log_x, alpha, log_y)), q)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
                    temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence (Agarwal et al., ICLR 2024, eq. 1), as TRL's GKDTrainer
    (generalized_jsd_loss) computes it:

        JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m),   m = beta p + (1 - beta) q,

    so beta weights the TEACHER p in the mixture. For 0 < beta < 1 that is the formula; the endpoints are defined
    as the limits of JSD(beta) / beta and JSD(beta) / (1 - beta): beta = 0 is forward KL(p || q) and beta = 1 is
    reverse KL(q || p), as in TRL. The raw JSD(beta) itself tends to 0 at both ends, so the value jumps there
    (inside (0, 1) it is bounded by log 2-ish terms, at the ends it is an unbounded KL).

    GKD's on-policy part (a fraction lambda of batches generated by the student) belongs to the trainer: this is
    the per-token divergence it evaluates on whichever sequences it is given."""
    _check_closed_unit("beta", beta, "0.5")
    q, p = _response_tokens(student_logits, teacher_logits, response_mask, temperature)
    log_q, log_p = q.log_softmax(-1), p.log_softmax(-1)
    if beta == 0:
        return _mean(_kl(log_p, log_q), q)
    if beta == 1:
        return _mean(_kl(log_q, log_p), q)
    log_m = _log_mixture(log_p, beta, log_q)
    return _mean(beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m), q)


def taid_target(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """TAID's intermediate distribution as log-probabilities: log_softmax((1 - t) * sg(student) + t * teacher).

    The interpolation is in LOGIT space (Shing et al., ICLR 2025; the authors' code, SakanaAI/TAID, does the same), with
    the student's current logits detached (sg = stop-gradient), so the target is a constant for this step."""
    _check_closed_unit("t", t, "0.4")
    return ((1 - t) * student_logits.detach() + t * teacher_logits.detach()).log_softmax(-1)


def taid(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
         temperature: float = 1.0, t: float = 0.4) -> torch.Tensor:
    """TAID (Shing et al., ICLR 2025): KL(p_t || q) toward the time-interpolated target p_t (:func:`taid_target`).

    t = 1 is forward KL to the teacher; t = 0 targets the student itself (zero loss, zero gradient). The paper
    moves t from t_start (0.4 in the authors' code) toward 1 during training with an adaptive, momentum-based
    update driven by the relative change of the loss; that schedule belongs to the trainer, which passes the
    current t here. Temperature divides both models' logits before they are interpolated."""
    _check_closed_unit("t", t, "0.4")
    q, p = _response_tokens(student_logits, teacher_logits, response_mask, temperature)
    return _mean(_kl(taid_target(q, p, t), q.log_softmax(-1)), q)


# ----------------------------------------------------------------------------------------------------------------
# Dispatch by name (recipes name the objective).

Objective = Callable[..., torch.Tensor]

#: name -> (function, its parameters beyond temperature with their defaults)
OBJECTIVES: dict[str, tuple[Objective, dict[str, float]]] = {
    "forward-kl": (forward_kl, {}),
    "reverse-kl": (reverse_kl, {}),
    "skew-kl": (skew_forward_kl, {"alpha": 0.1}),
    "skew-reverse-kl": (skew_reverse_kl, {"alpha": 0.1}),
    "gjsd": (generalized_jsd, {"beta": 0.5}),
    "taid": (taid, {"t": 0.4}),
}


def distillation_loss(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      response_mask: torch.Tensor, temperature: float = 1.0, **params: Any) -> torch.Tensor:
    """The objective called ``name`` (see :data:`OBJECTIVES`) with its parameters (alpha for the skew KLs, beta
    for gjsd, t for taid); a parameter the objective does not take is an error, not silently ignored."""
    if name not in OBJECTIVES:
        raise UserInputError("objective", f"unknown objective {name!r}", f"choose one of {', '.join(OBJECTIVES)}")
    function, defaults = OBJECTIVES[name]
    extra = sorted(set(params) - set(defaults))
    if extra:
        takes = ", ".join(defaults) or "only temperature"
        raise UserInputError(extra[0], f"objective {name!r} takes no parameter {extra[0]!r}", f"it takes {takes}")
    return function(student_logits, teacher_logits, response_mask, temperature, **{**defaults, **params})
