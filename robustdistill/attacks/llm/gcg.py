"""GCG: Greedy Coordinate Gradient suffix attack on chat language models.

Zou, Wang, Carlini, Nasr, Kolter, Fredrikson, "Universal and Transferable Adversarial Attacks on Aligned Language
Models" (2023), Algorithm 1 (single prompt) and Algorithm 2 (one universal suffix for several prompts; here the
mean loss over all prompts at once, without the paper's progressive addition of prompts).

Threat model: white-box access to the model's weights; the attacker appends a suffix of ``suffix_length`` tokens
to the user message (``prompt + " " + suffix``, rendered with the model's chat template) and wants the response to
begin with the target string ("Sure, here is ..."). Each step: gradient of the target loss w.r.t. the one-hot
suffix, top-k tokens per position, ``search_width`` candidates that swap ``n_replace`` random positions, keep only
candidates whose text re-tokenises to the same ids in the full prompt, evaluate all of them in batches (with the
KV cache of the fixed prefix), move to the lowest loss. The defaults are the paper's (and nanoGCG's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from robustdistill.attacks.judges import Judge
from robustdistill.attacks.llm import context as cx
from robustdistill.attacks.llm.evaluate import evaluate_suffix
from robustdistill.errors import UserInputError
from robustdistill.limits import check_int, check_seed, check_steps

logger = logging.getLogger(__name__)

# Single-token fillers tried, in order, for the default initial suffix ("x x x ...", the paper's "! ! ! ...").
_FILLERS = ("x", "!", "a", ".", "the")


@dataclass(frozen=True)
class GCGConfig:
    """Settings of one GCG run (defaults: Zou et al. 2023 / nanoGCG).

    ``suffix_init`` (text, without the separating space) overrides ``suffix_length``: the suffix is its tokens.
    ``batch_size`` None evaluates all candidates in one batch; any batch that runs out of memory is halved and
    retried, and the smaller size is kept. ``early_stop`` checks every ``check_every`` steps: with a judge, the
    greedy responses (of every prompt) are judged successes; without one, every target token is the argmax."""

    num_steps: int = 250
    suffix_length: int = 20
    suffix_init: str | None = None
    topk: int = 256
    search_width: int = 512
    n_replace: int = 1
    batch_size: int | None = None
    use_prefix_cache: bool = True
    early_stop: bool = False
    check_every: int = 1
    allow_non_ascii: bool = False
    seed: int = 0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        check_steps("num_steps", self.num_steps)
        check_int("suffix_length", self.suffix_length, 1, 1024)
        check_int("topk", self.topk, 1, 1_000_000)
        check_int("search_width", self.search_width, 1, 1_000_000)
        check_int("n_replace", self.n_replace, 1, 1024)
        if self.suffix_init is None and self.n_replace > self.suffix_length:
            raise UserInputError("n_replace", f"{self.n_replace} exceeds suffix_length {self.suffix_length}",
                                 "replace at most suffix_length tokens per candidate")
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1, 1_000_000, "or None to evaluate all candidates at once")
        check_int("check_every", self.check_every, 1, 1_000_000)
        check_seed("seed", self.seed)
        check_int("max_new_tokens", self.max_new_tokens, 1, 4096)
        if self.suffix_init is not None and (not isinstance(self.suffix_init, str) or not self.suffix_init.strip()):
            raise UserInputError("suffix_init", "must be a non-empty string", "or leave it out for 'x x x ...'")
        for name in ("use_prefix_cache", "early_stop", "allow_non_ascii"):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(name, f"must be true or false, got {getattr(self, name)!r}")


@dataclass
class GCGResult:
    """What a GCG run found. ``suffix`` is the text to append (after a space) to each prompt."""

    suffix: str
    suffix_ids: list[int]
    best_loss: float
    initial_loss: float
    losses: list[float]  # per step: the loss of the suffix the step moved to
    candidates_kept: list[int]  # per step: candidates that passed the re-tokenisation filter
    steps: int
    early_stopped: bool
    seconds_per_step: float
    prompts: list[str] = field(default_factory=list)
    initial_suffix: str = ""  # the suffix before any step (a baseline: does an unoptimised suffix already work?)
    generations: list[str] | None = None
    successes: list[bool] | None = None


CandidateHook = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, kept candidate ids, their losses)
BatchHook = Callable[[int], None]  # called with the size of each candidate batch before its forward pass


class _Search:
    """The state of one run: layouts, allowed tokens, loss, the current batch size."""

    def __init__(self, lm, contexts: list[cx.PromptContext], config: GCGConfig, on_batch: BatchHook | None):
        self.lm, self.contexts, self.config, self.on_batch = lm, contexts, config, on_batch
        self.device = lm.device
        self.loss = cx.TargetLoss(lm.model, config.use_prefix_cache)
        rows = self.loss.embed.weight.shape[0]
        self.allowed = cx.allowed_token_mask(lm.tokenizer, rows, config.allow_non_ascii, self.device)
        self.topk = min(config.topk, int(self.allowed.sum()))
        self.batch_size = config.batch_size
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

    def keep(self, ids: torch.Tensor) -> torch.Tensor:
        return cx.retokenises(self.lm.tokenizer, self.contexts, ids)

    def initial_ids(self) -> torch.Tensor:
        tokenizer, config = self.lm.tokenizer, self.config
        if config.suffix_init is not None:
            ids = cx.encode(tokenizer, " " + config.suffix_init, self.device)
            if ids.shape[1] < config.n_replace or not bool(self.keep(ids)[0]):
                raise UserInputError("suffix_init", "does not re-tokenise to the same tokens inside the prompt "
                                     f"(or has fewer than n_replace={config.n_replace} tokens)",
                                     "choose a suffix of plain words and punctuation")
            return ids[0]
        for filler in _FILLERS:
            ids = cx.encode(tokenizer, f" {filler}" * config.suffix_length, self.device)
            if ids.shape[1] == config.suffix_length and bool(self.allowed[ids].all()) and bool(self.keep(ids)[0]):
                return ids[0]
        raise UserInputError("suffix_init", "no default filler ('x', '!', ...) is one token with a leading space "
                             "in this tokenizer", "give suffix_init, a text of suffix_length tokens")

    @torch.inference_mode()
    def losses(self, ids: torch.Tensor, exact: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss over the prompts for each row of ``ids``; with ``exact``, whether it hits every target."""
        total = torch.zeros(ids.shape[0], device=self.device)
        hits = torch.ones(ids.shape[0], dtype=torch.bool, device=self.device) if exact else None
        for ctx in self.contexts:
            start = 0
            while start < ids.shape[0]:
                size = min(self.batch_size or ids.shape[0], ids.shape[0] - start)
                try:
                    if self.on_batch is not None:
                        self.on_batch(size)
                    part, match = self.loss.candidates(ctx, ids[start:start + size], exact)
                except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                    if not cx.is_out_of_memory(exc) or size == 1:
                        raise
                    self.batch_size = size // 2
                    logger.warning("gcg: out of memory with %d candidates per batch, retrying with %d",
                                   size, self.batch_size)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                total[start:start + size] += part
                if hits is not None:
                    hits[start:start + size] &= match
                start += size
        return total / len(self.contexts), hits

    def step(self, ids: torch.Tensor, exact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Candidates kept by the filter, their losses, and (with ``exact``) their target hits."""
        config = self.config
        grad = self.loss.gradient(self.contexts, ids)
        with torch.inference_mode():
            candidates = cx.sample_candidates(ids, grad, self.allowed, self.topk, config.search_width,
                                              config.n_replace, self.generator)
            # Repeats (about 5% of 512 draws from 20 x 256 swaps) would only be evaluated twice.
            candidates = cx.unique_rows(candidates)
            candidates = candidates[self.keep(candidates)]
        if candidates.shape[0] == 0:
            raise RuntimeError("gcg: no candidate re-tokenises to itself; try another suffix_init or allow_non_ascii")
        losses, hits = self.losses(candidates, exact)
        return candidates, losses, hits


def _pairs(prompts: str | Sequence[str], targets: str | Sequence[str]) -> tuple[list[str], list[str]]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    targets = [targets] * len(prompts) if isinstance(targets, str) else list(targets)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise UserInputError("prompts", "needs at least one non-empty prompt string")
    if len(targets) != len(prompts) or not all(isinstance(t, str) and t for t in targets):
        raise UserInputError("targets", f"{len(targets)} targets for {len(prompts)} prompts",
                             "give one non-empty target per prompt, or one target string for all")
    return prompts, targets


def gcg(lm, prompts: str | Sequence[str], targets: str | Sequence[str], config: GCGConfig | None = None,
        judge: Judge | None = None, *, on_candidates: CandidateHook | None = None,
        on_batch: BatchHook | None = None) -> GCGResult:
    """Optimise one suffix that makes ``lm`` (a LanguageModel) begin its answer to each prompt with its target.

    Several prompts give a universal suffix for their mean loss. With a ``judge``, the best suffix's greedy
    responses are generated and judged at the end (and drive ``early_stop``). ``on_candidates`` sees every
    step's kept candidates and losses; ``on_batch`` sees each candidate batch's size before its forward pass."""
    config = config or GCGConfig()
    prompts, targets = _pairs(prompts, targets)
    model = lm.model
    was_training = model.training
    model.eval()
    try:
        return _run(lm, prompts, targets, config, judge, on_candidates, on_batch)
    finally:
        model.train(was_training)


def _run(lm, prompts, targets, config, judge, on_candidates, on_batch) -> GCGResult:
    device = lm.device
    contexts = [cx.build_context(lm, p, t, device) for p, t in zip(prompts, targets)]
    if config.use_prefix_cache:
        for ctx in contexts:
            ctx.prefix = cx.prefix_cache(lm.model, ctx.before_ids)
    search = _Search(lm, contexts, config, on_batch)
    ids = search.initial_ids()
    if config.n_replace > ids.shape[0]:
        raise UserInputError("n_replace", f"{config.n_replace} exceeds the suffix's {ids.shape[0]} tokens")
    initial_loss = float(search.losses(ids[None], exact=False)[0][0])
    initial_suffix = cx.decode_suffixes(lm.tokenizer, ids[None])[0][1:]
    best_ids, best_loss = ids, initial_loss
    losses: list[float] = []
    kept: list[int] = []
    early_stopped = False
    started = time.perf_counter()
    for step in range(config.num_steps):
        check = config.early_stop and (step + 1) % config.check_every == 0
        candidates, cand_losses, hits = search.step(ids, exact=check and judge is None)
        if on_candidates is not None:
            on_candidates(step, candidates, cand_losses)
        pick = int(cand_losses.argmin())
        ids, loss = candidates[pick], float(cand_losses[pick])
        losses.append(loss)
        kept.append(candidates.shape[0])
        if loss < best_loss:
            best_ids, best_loss = ids, loss
        logger.info("gcg step %d/%d: loss %.4f (best %.4f), %d candidates", step + 1, config.num_steps, loss,
                    best_loss, candidates.shape[0])
        if check and _succeeded(lm, prompts, ids, hits, pick, judge, config):
            early_stopped = True
            best_ids, best_loss = ids, loss
            break
    seconds = (time.perf_counter() - started) / max(len(losses), 1)
    suffix = cx.decode_suffixes(lm.tokenizer, best_ids[None])[0][1:]
    result = GCGResult(suffix=suffix, suffix_ids=best_ids.tolist(), best_loss=best_loss, initial_loss=initial_loss,
                       losses=losses, candidates_kept=kept, steps=len(losses), early_stopped=early_stopped,
                       seconds_per_step=seconds, prompts=prompts, initial_suffix=initial_suffix)
    if judge is not None:
        outcomes = evaluate_suffix(lm, prompts, suffix, judge, config.max_new_tokens)
        result.generations = [o.response for o in outcomes]
        result.successes = [o.success for o in outcomes]
    return result


def _succeeded(lm, prompts, ids, hits, pick, judge, config) -> bool:
    if judge is None:
        return bool(hits[pick])
    suffix = cx.decode_suffixes(lm.tokenizer, ids[None])[0][1:]
    return all(o.success for o in evaluate_suffix(lm, prompts, suffix, judge, config.max_new_tokens))
