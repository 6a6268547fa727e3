"""Token-level distillation of causal LMs (``logit-kd``), with GKD's on-policy fraction.

    robustdistill train logit-kd --config defenses/instructions-logit-kd.toml --out checkpoints/lm-logit-kd

The student matches the teacher's next-token distributions at every response position (prompt tokens never reach
the loss) under one of the objectives of robustdistill.trainers.lm_objectives: forward KL (word-level KD), reverse
KL (MiniLLM's divergence, token level), DistiLLM's skew KL and skew reverse KL, GKD's generalized JSD, or TAID.
With probability ``lmbda`` a batch's answers are the student's own samples (GKD, Agarwal et al., ICLR 2024: on-policy
data, sampled at ``sampling_temperature`` from torch's seeded stream) instead of the data's. TAID's interpolation t
moves linearly in optimiser steps from ``taid_t_start`` to 1 (the paper's adaptive, loss-driven schedule is not
implemented). Teacher and student must share a tokenizer: the teacher scores the student's token ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robustdistill.errors import UserInputError
from robustdistill.models.language import LanguageModel
from robustdistill.models.lm_text import EncodedPair, TokenBatch, max_length, pad_batch, response_logits, special_ids
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.lm import TeacherMixin
from robustdistill.trainers.lm_base import LMTrainer, token_cross_entropy
from robustdistill.trainers.lm_config import LogitKDConfig, objective_params
from robustdistill.trainers.lm_objectives import distillation_loss


@torch.no_grad()
def sample_answers(lm: LanguageModel, pairs: Sequence[EncodedPair], max_new_tokens: int,
                   temperature: float) -> list[EncodedPair]:
    """Each pair's prompt followed by an answer sampled from ``lm`` (plain sampling at ``temperature``, up to its
    first eos, kept), as new pairs; the randomness is torch's global stream (seed it first)."""
    eos, pad = special_ids(lm)
    prompts = [list(pair.prompt_ids) for pair in pairs]
    width = max(len(ids) for ids in prompts)
    new_tokens = min(max_new_tokens, max_length(lm) - width)
    if new_tokens < 1:
        raise UserInputError("max_new_tokens", f"a {width}-token prompt leaves no room within the model's "
                             f"{max_length(lm)} positions", "shorten the prompts")
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, seq in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attention[row, width - len(seq):] = 1
    was_training = lm.model.training
    lm.model.eval()
    generated = lm.model.generate(input_ids=ids.to(lm.device), attention_mask=attention.to(lm.device),
                                  max_new_tokens=new_tokens, do_sample=True, temperature=temperature, top_k=0,
                                  top_p=1.0, eos_token_id=eos, pad_token_id=pad)
    lm.model.train(was_training)
    sampled = []
    for prompt, row in zip(prompts, generated[:, width:].tolist()):
        answer = row[: row.index(eos) + 1] if eos in row else row
        sampled.append(EncodedPair(tuple(prompt + answer), len(prompt)))
    return sampled


def same_vocabulary(teacher: LanguageModel, student: LanguageModel) -> None:
    teacher_vocab, student_vocab = teacher.tokenizer.get_vocab(), student.tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        raise UserInputError("teacher", f"{teacher.path} has another tokenizer than the student (vocabularies of "
                             f"{len(teacher_vocab)} and {len(student_vocab)} tokens"
                             f"{', same size, different tokens' if len(teacher_vocab) == len(student_vocab) else ''})",
                             "logit-level distillation needs a shared tokenizer; use seq-kd (trains on the teacher's "
                             "generated text) for a teacher with another tokenizer")


@TRAINERS.register("logit-kd")
class LogitKDTrainer(TeacherMixin, LMTrainer):
    """Token-level LM distillation (forward/reverse KL, DistiLLM skew KLs, GKD's JSD, TAID) with on-policy batches."""

    config_class = LogitKDConfig
    method = "logit-kd"
    config: LogitKDConfig

    def check_student(self, student: LanguageModel) -> None:
        same_vocabulary(self.teacher, student)
        # Embedding matrices may be padded past the tokenizer (to a multiple of 64): compare real tokens only.
        self.vocab = len(student.tokenizer)

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: TokenBatch,
             step: int) -> torch.Tensor:
        """The objective on the response tokens of ``batch`` (+ ce_weight x their cross-entropy)."""
        cfg = self.config
        vocab = getattr(self, "vocab", student_logits.shape[-1])
        loss = distillation_loss(cfg.objective, student_logits[..., :vocab], teacher_logits[..., :vocab],
                                 batch.target_mask, cfg.temperature,
                                 **objective_params(cfg, step, self.total_steps))
        if cfg.ce_weight > 0:
            loss = loss + cfg.ce_weight * token_cross_entropy(student_logits, batch)
        return loss

    def batch_loss(self, student: LanguageModel, pairs: Sequence[EncodedPair], step: int,
                   generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        # One draw per batch from the epoch's stream, made whatever lmbda is, so that lmbda does not shift the
        # rest of the stream.
        on_policy = float(torch.rand((), generator=generator)) < cfg.lmbda
        if on_policy:
            pairs = sample_answers(student, pairs, cfg.max_new_tokens, cfg.sampling_temperature)
        batch = pad_batch(pairs, special_ids(student)[1]).to(self.device)
        with torch.no_grad():
            teacher_logits = response_logits(self.teacher, batch)
        return self.loss(response_logits(student, batch), teacher_logits, batch, step)

    def extra_provenance(self) -> dict[str, object]:
        cfg = self.config
        return {"objective": {"name": cfg.objective, "temperature": cfg.temperature, "lmbda": cfg.lmbda,
                              "ce_weight": cfg.ce_weight, "taid_schedule": "linear in steps" if cfg.objective == "taid"
                              else None}}
