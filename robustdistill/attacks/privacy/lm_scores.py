"""Membership-inference scores of a causal language model on (prompt, response) examples.

An instruction-tuned model is trained on its response tokens conditioned on the rendered prompt, so every score here
reads the RESPONSE tokens only (the response and its end-of-sequence token, each predicted from the chat-template
rendering of the prompt and the response so far). One forward pass per batch gives every score; all math on
log-probabilities is float64. Higher score = more likely a member, the convention of :func:`membership_metrics`:

- ``loss`` (Yeom et al. 2018; Carlini et al. 2021): minus the mean token negative log-likelihood (NLL).
- ``zlib`` (Carlini et al. 2021, "Extracting Training Data from Large Language Models", section 6.1): the ratio of
  the log-perplexity (= the mean token NLL) to the zlib entropy of the text, taken as the length in bytes of
  ``zlib.compress`` of its UTF-8 bytes at zlib's default level; the paper ranks a low ratio as memorised, so the score
  is minus the ratio. The text compressed is the response alone, the text the NLL is measured on.
- ``min-k`` (Shi et al., ICLR 2024, "Detecting Pretraining Data from Large Language Models"): the mean log-probability
  of the k% least likely response tokens.
- ``min-k++`` (Zhang et al. 2024, "Min-K%++"): each token's log p standardised by the mean and standard deviation of
  log p(z) for z drawn from the model's own next-token distribution at that position, then the min-k% mean.
- ``reference`` (Carlini et al. 2021, the reference-model comparison): the reference model's mean NLL minus the
  target's on the same text (the target finds it easier than the reference does = member). Each model tokenises
  the text with its own tokenizer, so the reference need not share the target's vocabulary.

The k% count is ``floor(k * n)`` tokens as in both papers' code, but at least one (a short response still scores).

Members and non-members must come from a random split of ONE pool (:func:`robustdistill.data.instructions.split_pool`),
or the attack measures a distribution shift instead of membership (Duan et al. 2024; Das et al. 2024).
"""

from __future__ import annotations

import logging
import math
import numbers
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustdistill.attacks.privacy.metrics import MembershipMetrics, membership_metrics
from robustdistill.data.instructions import InstructionDataset, InstructionExample
from robustdistill.errors import UserInputError
from robustdistill.limits import check_int
from robustdistill.models.language import LanguageModel
from robustdistill.models.lm_text import encode_pair, pad_batch, response_logits, special_ids

logger = logging.getLogger(__name__)

LM_ATTACKS: tuple[str, ...] = ("loss", "zlib", "min-k", "min-k++", "reference")
DEFAULT_LM_ATTACKS: tuple[str, ...] = ("loss", "zlib", "min-k", "min-k++")
# Below this the next-token distribution is a point mass and min-k%++'s standardisation divides by ~0; flooring
# sigma keeps the value finite (it is then dominated by log p - mu, which is ~0 for the certain token).
MIN_SIGMA = 1e-12


@dataclass(frozen=True)
class TokenStats:
    """One example's response tokens (eos included): log p of each token, and mu / sigma of log p(z), z drawn from
    the model's next-token distribution at that position; float64 arrays of one length."""

    logprobs: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @property
    def nll(self) -> float:
        """Mean token negative log-likelihood."""
        return float(-np.mean(self.logprobs))


# ---- scores on token log-probabilities (pure functions) -----------------------------------------------------------

def check_k(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(float(k)) or not 0 < k <= 1:
        raise UserInputError("k", f"must be a fraction of the tokens in (0, 1], got {k!r}", "e.g. 0.2 for min-20%")
    return float(k)


def min_k_count(n_tokens: int, k: float) -> int:
    """How many of ``n_tokens`` the min-k% mean takes: floor(k * n), at least one."""
    # The epsilon keeps e.g. 0.3 * 10 = 2.9999999999999996 from losing a token to float rounding.
    return max(1, math.floor(check_k(k) * n_tokens + 1e-9))


def _tokens(values: Any, name: str = "logprobs") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise UserInputError(name, "has no tokens", "score at least one response token")
    return array


def loss_score(logprobs: Any) -> float:
    """Minus the mean token NLL = the mean token log-probability."""
    return float(np.mean(_tokens(logprobs)))


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (default level), Carlini et al. 2021's zlib entropy."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(logprobs: Any, text: str) -> float:
    """Minus (log-perplexity / zlib entropy of ``text``): a low ratio is the paper's sign of memorisation."""
    return -float(-np.mean(_tokens(logprobs)) / zlib_entropy(text))


def min_k_score(logprobs: Any, k: float) -> float:
    """Mean of the ``min_k_count`` smallest token log-probabilities."""
    values = _tokens(logprobs)
    return float(np.mean(np.sort(values)[: min_k_count(values.size, k)]))


def min_k_plus_score(logprobs: Any, mu: Any, sigma: Any, k: float) -> float:
    """The min-k% mean of (log p - mu) / sigma, token by token."""
    values, mu, sigma = _tokens(logprobs), _tokens(mu, "mu"), _tokens(sigma, "sigma")
    if not values.shape == mu.shape == sigma.shape:
        raise UserInputError("mu", f"{values.size} log-probabilities but {mu.size} means and {sigma.size} deviations",
                             "give one mu and one sigma per token")
    return min_k_score((values - mu) / np.maximum(sigma, MIN_SIGMA), k)


def reference_score(target_logprobs: Any, reference_logprobs: Any) -> float:
    """Reference mean NLL minus target mean NLL (each over its own tokens of the same text)."""
    return loss_score(target_logprobs) - loss_score(reference_logprobs)


def next_token_moments(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu = E_z[log p(z)] and sigma = sqrt(E_z[(log p(z) - mu)^2]), z ~ p, over the last dimension of the
    log-probabilities. The centred form of E[(log p)^2] - mu^2 avoids its cancellation; p = 0 entries (log p = -inf)
    contribute nothing, as in the expectation."""
    probs = log_probs.exp()
    finite = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
    mu = (probs * finite).sum(-1)
    centred = torch.where(probs > 0, finite - mu.unsqueeze(-1), torch.zeros_like(log_probs))
    return mu, (probs * centred.square()).sum(-1).sqrt()


# ---- a model's token statistics on examples ----------------------------------------------------------------------

def as_pairs(examples: Any, field: str = "examples") -> list[tuple[str, str]]:
    """``examples`` (an InstructionDataset, InstructionExamples or (prompt, response) pairs) as a list of pairs."""
    if isinstance(examples, InstructionDataset):
        return [(e.prompt, e.response) for e in examples]
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise UserInputError(field, f"must be an InstructionDataset or a list of (prompt, response), got "
                             f"{type(examples).__name__}", "e.g. [('What is 2 plus 3?', '5')]")
    if not examples:
        raise UserInputError(field, "is empty", "give at least one (prompt, response) example")
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(examples):
        if isinstance(item, InstructionExample):
            item = (item.prompt, item.response)
        if (isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2
                or not all(isinstance(part, str) for part in item)):
            raise UserInputError(f"{field}[{index}]", f"must be a (prompt, response) pair of strings, got {item!r:.60}",
                                 "e.g. ('What is 2 plus 3?', '5')")
        pairs.append((item[0], item[1]))
    return pairs


def _check_model(lm: Any, field: str) -> LanguageModel:
    if not isinstance(lm, LanguageModel):
        raise UserInputError(field, f"must be a causal language model, got {type(lm).__name__}",
                             "load one with robustdistill.load_model(path)")
    return lm


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    # Dropout would make the scores random: score in eval mode, then leave the model as the caller had it.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def response_token_stats(lm: LanguageModel, examples: Any, batch_size: int = 16,
                         field: str = "lm") -> list[TokenStats]:
    """Each example's :class:`TokenStats`, in order: one forward pass per right-padded batch."""
    lm = _check_model(lm, field)
    pairs = as_pairs(examples)
    batch_size = check_int("batch_size", batch_size, 1, 1 << 16, "e.g. 16")
    _, pad = special_ids(lm)
    stats: list[TokenStats] = []
    with _evaluating(lm.model):
        for start in range(0, len(pairs), batch_size):
            encoded = [encode_pair(lm, prompt, response) for prompt, response in pairs[start : start + batch_size]]
            batch = pad_batch(encoded, pad).to(lm.device)
            mask = batch.target_mask
            # Row-major boolean indexing keeps each example's positions together and in order; float64 from here.
            log_probs = torch.log_softmax(response_logits(lm, batch)[mask].double(), dim=-1)
            token = log_probs.gather(-1, batch.ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
            mu, sigma = next_token_moments(log_probs)
            if not (torch.isfinite(token).all() and torch.isfinite(mu).all()):
                raise UserInputError(field, f"gives non-finite log-probabilities on examples {start}.."
                                     f"{start + len(encoded) - 1}", "check the checkpoint's weights")
            counts = mask.sum(dim=1).tolist()
            columns = (t.cpu().split(counts) for t in (token, mu, sigma))
            stats.extend(TokenStats(values.numpy(), means.numpy(), deviations.numpy())
                         for values, means, deviations in zip(*columns))
    return stats


def _check_attacks(attacks: Any, reference: Any) -> tuple[str, ...]:
    if isinstance(attacks, str) or not isinstance(attacks, Sequence) or not attacks:
        raise UserInputError("attacks", f"must be a non-empty list of attack names, got {attacks!r}",
                             f"use some of: {', '.join(LM_ATTACKS)}")
    unknown = [name for name in attacks if name not in LM_ATTACKS]
    if unknown:
        raise UserInputError("attacks", f"unknown attack {unknown[0]!r}", f"use some of: {', '.join(LM_ATTACKS)}")
    chosen = tuple(dict.fromkeys(attacks))
    if "reference" in chosen and reference is None:
        raise UserInputError("reference", "the reference attack needs a reference model",
                             "pass reference=<a LanguageModel not trained on the members>, or drop 'reference'")
    if reference is not None and "reference" not in chosen:
        chosen += ("reference",)
    return chosen


def lm_scores(lm: LanguageModel, examples: Any, attacks: Sequence[str] = DEFAULT_LM_ATTACKS, k: float = 0.2,
              batch_size: int = 16, reference: LanguageModel | None = None) -> dict[str, np.ndarray]:
    """attack name -> one float64 score per example (higher = more likely a member), in the examples' order.

    ``examples``: an InstructionDataset or a list of (prompt, response). ``k``: min-k%'s fraction of tokens.
    ``reference``: a model not trained on the members; giving one adds the ``reference`` attack."""
    chosen = _check_attacks(attacks, reference)
    k = check_k(k)
    pairs = as_pairs(examples)
    stats = response_token_stats(lm, pairs, batch_size)
    scores: dict[str, list[float]] = {}
    for name in chosen:
        if name == "loss":
            scores[name] = [loss_score(s.logprobs) for s in stats]
        elif name == "zlib":
            scores[name] = [zlib_score(s.logprobs, response) for s, (_, response) in zip(stats, pairs)]
        elif name == "min-k":
            scores[name] = [min_k_score(s.logprobs, k) for s in stats]
        elif name == "min-k++":
            scores[name] = [min_k_plus_score(s.logprobs, s.mu, s.sigma, k) for s in stats]
        else:
            baseline = response_token_stats(_check_model(reference, "reference"), pairs, batch_size, "reference")
            scores[name] = [reference_score(s.logprobs, r.logprobs) for s, r in zip(stats, baseline)]
    return {name: np.asarray(values, dtype=np.float64) for name, values in scores.items()}


def lm_membership(target: LanguageModel, members: Any, nonmembers: Any, attacks: Sequence[str] = DEFAULT_LM_ATTACKS,
                  reference: LanguageModel | None = None, k: float = 0.2,
                  batch_size: int = 16) -> dict[str, MembershipMetrics]:
    """attack name -> membership metrics (AUC with its interval, TPR at low FPR, balanced accuracy) of ``target``.

    ``members`` are the examples the model that was TRAINED trained on: to audit a distilled student, pass the
    teacher's members; the student leaks them even when it never saw them ("Students Parrot Their Teachers",
    Jagielski et al. 2023). Both sets should be a random split of one pool."""
    member_pairs, nonmember_pairs = as_pairs(members, "members"), as_pairs(nonmembers, "nonmembers")
    shared = set(member_pairs) & set(nonmember_pairs)
    if shared:
        example = next(iter(shared))
        raise UserInputError("nonmembers", f"{len(shared)} example(s) are also in members, e.g. {example!r:.60}",
                             "split one pool into disjoint members and non-members (data.instructions.split_pool)")
    scores = lm_scores(target, member_pairs + nonmember_pairs, attacks, k=k, batch_size=batch_size,
                       reference=reference)
    is_member = np.r_[np.ones(len(member_pairs), dtype=bool), np.zeros(len(nonmember_pairs), dtype=bool)]
    return {name: membership_metrics(values, is_member) for name, values in scores.items()}
