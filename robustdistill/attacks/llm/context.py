"""The pieces of one GCG step that touch the model and tokenizer: prompt layout, token filter, gradient, losses.

Layout of one prompt, as the model sees it (rendered with the model's own chat template)::

    before_ids | suffix_ids | after_ids | target_ids

``before`` ends with the prompt's last character; the space that separates prompt and suffix belongs to the suffix
segment (its first token starts with it), because byte-level BPE attaches a space to the token after it: a
``before`` ending in a bare space token would never re-tokenise the same way in the full text. The user message is
therefore ``prompt + " " + suffix`` with ``suffix`` the decoded segment minus that space.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from robustdistill.errors import UserInputError

# Rendered in place of the suffix to find where the template puts it; nothing a template would rewrite.
PLACEHOLDER = "<<robustdistill-gcg-suffix>>"


@dataclass
class PromptContext:
    """One (prompt, target) pair laid out around the suffix, with the KV cache of its fixed prefix."""

    before_text: str
    after_text: str
    before_ids: torch.Tensor  # (1, Lb)
    after_ids: torch.Tensor  # (1, La)
    target_ids: torch.Tensor  # (1, T)
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def sequence(self, suffix_text: str) -> str:
        return self.before_text + suffix_text + self.after_text


def encode(tokenizer: Any, text: str, device: torch.device) -> torch.Tensor:
    # The chat template writes its own special tokens (bos), so the tokenizer must not add more.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids], dtype=torch.long, device=device)


def split_template(lm: Any, prompt: str) -> tuple[str, str]:
    """The chat-template text before the suffix's separating space, and after the suffix."""
    text = lm.format_chat([{"role": "user", "content": f"{prompt} {PLACEHOLDER}"}], add_generation_prompt=True)
    if text.count(PLACEHOLDER) != 1:
        raise UserInputError("prompts", f"the chat template does not place the user message once: {prompt[:40]!r}",
                             "use a template that renders the user's content verbatim")
    before, after = text.split(PLACEHOLDER)
    if not before.endswith(" "):
        raise UserInputError("prompts", "the chat template rewrites the space between prompt and suffix",
                             "use a template that renders the user's content verbatim")
    return before[:-1], after


def build_context(lm: Any, prompt: str, target: str, device: torch.device) -> PromptContext:
    before, after = split_template(lm, prompt)
    target_ids = encode(lm.tokenizer, target, device)
    if target_ids.shape[1] < 1:
        raise UserInputError("targets", "a target string encodes to no tokens", "give a non-empty target")
    return PromptContext(before, after, encode(lm.tokenizer, before, device), encode(lm.tokenizer, after, device),
                         target_ids)


def allowed_token_mask(tokenizer: Any, vocab_rows: int, allow_non_ascii: bool, device: torch.device) -> torch.Tensor:
    """Tokens a candidate may use: never special tokens (nor embedding rows past the tokenizer); printable ASCII
    unless ``allow_non_ascii`` (the GCG paper's restriction, so suffixes can be typed and shown)."""
    n = min(len(tokenizer), vocab_rows)
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    keep = [bool(t) and (allow_non_ascii or (t.isascii() and t.isprintable())) for t in texts]
    mask = torch.zeros(vocab_rows, dtype=torch.bool)
    mask[:n] = torch.tensor(keep, dtype=torch.bool)
    special = [i for i in tokenizer.all_special_ids if 0 <= i < vocab_rows]
    special += [i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and 0 <= i < vocab_rows]
    mask[special] = False
    return mask.to(device)


def decode_suffixes(tokenizer: Any, ids: torch.Tensor) -> list[str]:
    rows = ids.tolist()
    if getattr(tokenizer, "is_fast", False):
        # The Rust tokenizer directly: the same text as batch_decode without its per-token Python conversions
        # (a third of the filter's time on 512 candidates).
        return tokenizer.backend_tokenizer.decode_batch(rows, skip_special_tokens=False)
    return tokenizer.batch_decode(rows, clean_up_tokenization_spaces=False)


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if getattr(tokenizer, "is_fast", False):
        backend = tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def unique_rows(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` without repeated rows, first occurrences in their original order (so seeded runs stay the same)."""
    _, inverse = torch.unique(ids, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), ids.shape[0], dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.shape[0], device=ids.device), reduce="amin")
    return ids[first.sort().values]


def retokenises(tokenizer: Any, contexts: list[PromptContext], ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool: candidate i decodes to text that starts with the separating space and, placed in every prompt's
    full template text, tokenises back to exactly before | ids[i] | after. The text is what a user (or the
    evaluation of another model) feeds in, so a kept candidate is the input the loss was computed on."""
    texts = decode_suffixes(tokenizer, ids)
    ok = torch.tensor([t.startswith(" ") for t in texts], dtype=torch.bool)
    rows = ids.tolist()
    for ctx in contexts:
        before, after = ctx.before_ids[0].tolist(), ctx.after_ids[0].tolist()
        encoded = encode_batch(tokenizer, [ctx.sequence(t) for t in texts])
        same = [enc == before + row + after for enc, row in zip(encoded, rows)]
        ok &= torch.tensor(same, dtype=torch.bool)
    return ok.to(ids.device)


def prefix_cache(model: Any, before_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Keys and values of the fixed prefix, per layer; None when the model's cache is not plain key/value layers
    (then the caller runs the whole sequence instead)."""
    with torch.inference_mode():
        out = model(input_ids=before_ids, use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return None
    # Clone out of inference mode so the gradient pass may read them too.
    return [(layer.keys.clone(), layer.values.clone()) for layer in layers]


def expanded_cache(model: Any, prefix: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> Any:
    """A fresh DynamicCache holding the prefix for ``batch`` rows. The forward pass appends by concatenation
    (new tensors), so the stored prefix is never written to."""
    from transformers import DynamicCache

    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix]
    return DynamicCache(ddp_cache_data=data, config=model.config)


class TargetLoss:
    """Mean cross-entropy of the target tokens, for a batch of suffixes (token ids) or one suffix (embeddings)."""

    def __init__(self, model: Any, use_prefix_cache: bool) -> None:
        self.model = model
        self.use_prefix_cache = use_prefix_cache
        self.embed = model.get_input_embeddings()
        # Only the target positions need the (vocabulary-wide) output projection.
        parameters = inspect.signature(model.forward).parameters
        self.keeps_logits = "logits_to_keep" in parameters
        # transformers 5 renamed the argument (past_key_values still works there, with a deprecation warning).
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"

    def _logits(self, ctx: PromptContext, batch: int, **inputs: Any) -> torch.Tensor:
        n = ctx.target_ids.shape[1]
        kwargs: dict[str, Any] = {"logits_to_keep": n} if self.keeps_logits else {}
        if self.use_prefix_cache and ctx.prefix is not None:
            kwargs[self.cache_arg] = expanded_cache(self.model, ctx.prefix, batch)
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        return self.model(**inputs, **kwargs).logits[:, -n:]

    def _needs_prefix(self, ctx: PromptContext) -> bool:
        return not (self.use_prefix_cache and ctx.prefix is not None)

    def candidates(self, ctx: PromptContext, ids: torch.Tensor, exact: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,) losses for suffix ids (B, L); with ``exact``, also whether every target token is the argmax."""
        batch = ids.shape[0]
        # The last target token predicts nothing we score, so it is not fed.
        parts = [ids, ctx.after_ids.expand(batch, -1), ctx.target_ids[:, :-1].expand(batch, -1)]
        if self._needs_prefix(ctx):
            parts.insert(0, ctx.before_ids.expand(batch, -1))
        logits = self._logits(ctx, batch, input_ids=torch.cat(parts, dim=1))
        target = ctx.target_ids.expand(batch, -1)
        # Flattened rows: cross_entropy over a transposed (B, V, T) view walks memory with a stride, 3x slower.
        flat = logits.float().reshape(-1, logits.shape[-1])
        losses = F.cross_entropy(flat, target.reshape(-1), reduction="none").view(batch, -1).mean(dim=1)
        match = (logits.argmax(dim=-1) == target).all(dim=1) if exact else None
        return losses, match

    def from_embeddings(self, ctx: PromptContext, suffix_embeds: torch.Tensor) -> torch.Tensor:
        """Scalar loss for one suffix given as embeddings (1, L, D): the differentiable path."""
        parts = [suffix_embeds, self.embed(ctx.after_ids), self.embed(ctx.target_ids[:, :-1])]
        if self._needs_prefix(ctx):
            parts.insert(0, self.embed(ctx.before_ids))
        logits = self._logits(ctx, 1, inputs_embeds=torch.cat(parts, dim=1))
        return F.cross_entropy(logits[0].float(), ctx.target_ids[0])

    def gradient(self, contexts: list[PromptContext], suffix_ids: torch.Tensor) -> torch.Tensor:
        """d(mean loss over prompts) / d(one-hot suffix), shape (L, vocabulary rows)."""
        weight = self.embed.weight
        onehot = torch.zeros(suffix_ids.shape[0], weight.shape[0], dtype=weight.dtype, device=weight.device)
        onehot.scatter_(1, suffix_ids[:, None], 1.0)
        onehot.requires_grad_(True)
        suffix_embeds = (onehot @ weight)[None]
        loss = sum(self.from_embeddings(ctx, suffix_embeds) for ctx in contexts) / len(contexts)
        (grad,) = torch.autograd.grad(loss, [onehot])
        return grad


def sample_candidates(suffix_ids: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, topk: int, width: int,
                      n_replace: int, generator: torch.Generator) -> torch.Tensor:
    """(width, L) candidates: each replaces ``n_replace`` distinct random positions with a random token among that
    position's top-k by negative gradient (over allowed tokens only)."""
    length = suffix_ids.shape[0]
    device = suffix_ids.device
    top = (-grad).masked_fill(~allowed, float("-inf")).topk(topk, dim=1).indices  # (L, k)
    positions = torch.rand(width, length, generator=generator, device=device).argsort(dim=1)[:, :n_replace]
    picks = torch.randint(topk, (width, n_replace), generator=generator, device=device)
    return suffix_ids.repeat(width, 1).scatter_(1, positions, top[positions, picks])


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU out of memory, or the CPU allocator refusing a batch (its message says "can't allocate memory")."""
    message = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message))
