"""Prompts and responses as token ids, through a language model's own chat template; batched greedy generation.

Every language-model trainer, attack and probe goes through these, so that a prompt is rendered exactly as the model
was trained to see it, and losses count response tokens only:

    encoded = encode_pair(lm, "What is 2 plus 3?", "5")     # ids of template(prompt) + ids of response + eos
    batch = pad_batch([encoded, ...], lm.pad_id)            # right-padded ids, attention mask, response mask
    texts = generate(lm, ["What is 2 plus 3?"], max_new_tokens=16)   # greedy, deterministic

The prompt is rendered with the chat template and ``add_generation_prompt=True``; the response is tokenised on its
own and followed by the end-of-sequence token, which the model learns to emit where its answer stops. Tokenising the
two parts separately (instead of the rendered conversation as one string) keeps the prompt/response boundary exact
whatever the tokenizer merges across it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustdistill.errors import UserInputError
from robustdistill.models.language import LanguageModel
from robustdistill.utils import derived_seed

# Tiny models built here have 256 positions; real ones far more. The smaller of this and the model's own limit.
DEFAULT_MAX_LENGTH = 4096


@dataclass(frozen=True)
class EncodedPair:
    """One (prompt, response) as ids: ``ids[:response_start]`` is the rendered prompt, the rest the response + eos."""

    ids: tuple[int, ...]
    response_start: int

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.ids[: self.response_start]

    @property
    def response_ids(self) -> tuple[int, ...]:
        return self.ids[self.response_start :]


@dataclass
class TokenBatch:
    """Right-padded ids (batch, seq), attention mask, and ``response_mask``: True where the token is a response token
    (so ``logits[:, :-1]`` is scored against ``ids[:, 1:]`` where ``response_mask[:, 1:]``)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))

    @property
    def target_mask(self) -> torch.Tensor:
        """(batch, seq - 1): which next-token predictions count (response tokens, padding excluded)."""
        return self.response_mask[:, 1:]


def max_length(lm: LanguageModel) -> int:
    """The longest sequence the model takes: its position limit where the config has one."""
    config = lm.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(int(limit), DEFAULT_MAX_LENGTH) if limit else DEFAULT_MAX_LENGTH


def special_ids(lm: LanguageModel) -> tuple[int, int]:
    """(eos, pad): a tokenizer without a pad token pads with eos (padding is masked out everywhere)."""
    tokenizer = lm.tokenizer
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserInputError(str(lm.path or "tokenizer"), "the tokenizer has no end-of-sequence token",
                             "set eos_token in tokenizer_config.json")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(eos), int(pad)


def render_prompt(lm: LanguageModel, prompt: str) -> str:
    """The text the model continues for a one-turn user ``prompt`` (chat template with the generation prompt)."""
    return lm.format_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)


def encode_prompt(lm: LanguageModel, prompt: str) -> list[int]:
    # add_special_tokens=False: the template already writes bos where the model expects it.
    return list(lm.tokenizer(render_prompt(lm, prompt), add_special_tokens=False)["input_ids"])


def encode_pair(lm: LanguageModel, prompt: str, response: str, limit: int | None = None) -> EncodedPair:
    """Prompt ids + response ids + eos; a response too long for the model is cut (the prompt never is)."""
    eos, _ = special_ids(lm)
    limit = limit or max_length(lm)
    prompt_ids = encode_prompt(lm, prompt)
    if len(prompt_ids) >= limit:
        raise UserInputError("prompt", f"{len(prompt_ids)} tokens leave no room for a response within the model's "
                             f"{limit} positions ({prompt[:40]!r}...)", "shorten the prompt or drop the example")
    response_ids = list(lm.tokenizer(response, add_special_tokens=False)["input_ids"]) + [eos]
    ids = (prompt_ids + response_ids)[:limit]
    return EncodedPair(tuple(ids), len(prompt_ids))


def pad_batch(pairs: Sequence[EncodedPair], pad_id: int) -> TokenBatch:
    """Right padding (training and scoring; generation pads on the left, see :func:`generate`)."""
    if not pairs:
        raise UserInputError("batch", "is empty", "pass at least one encoded example")
    width = max(len(pair.ids) for pair in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    response = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, pair in enumerate(pairs):
        n = len(pair.ids)
        ids[row, :n] = torch.tensor(pair.ids, dtype=torch.long)
        attention[row, :n] = 1
        response[row, pair.response_start : n] = True
    return TokenBatch(ids, attention, response)


def response_logits(lm: LanguageModel, batch: TokenBatch) -> torch.Tensor:
    """Logits aligned with the next token: (batch, seq - 1, vocab), position s predicting ``batch.ids[:, s + 1]``."""
    out = lm.model(input_ids=batch.ids, attention_mask=batch.attention_mask)
    return out.logits[:, :-1]


@torch.no_grad()
def generate(lm: LanguageModel, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Responses to ``prompts`` (each rendered with the chat template), batched with left padding: greedy, or
    sampled at ``temperature`` > 0 (plain sampling, no top-k/top-p).

    Greedy decoding makes the output a function of the weights and the prompt alone (the judges and the seq-kd
    trainer rely on it); sampling draws each batch from its own stream seeded by (``seed``, the batch's position),
    without touching torch's global stream, so the same call gives the same text. Decoding stops at eos, and special
    tokens are dropped from the text."""
    if not 1 <= max_new_tokens <= 4096:
        raise UserInputError("max_new_tokens", f"must be in [1, 4096], got {max_new_tokens}", "e.g. 32")
    if not 0 <= temperature <= 100:
        raise UserInputError("temperature", f"must be in [0, 100], got {temperature}", "0 for greedy, e.g. 1.0 to sample")
    eos, pad = special_ids(lm)
    limit = max_length(lm)
    device = lm.device
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(lm, prompt) for prompt in prompts[start : start + batch_size]]
        for prompt, ids in zip(prompts[start : start + batch_size], encoded):
            if len(ids) + max_new_tokens > limit:
                raise UserInputError("max_new_tokens", f"{len(ids)} prompt tokens + {max_new_tokens} new tokens "
                                     f"exceed the model's {limit} positions ({prompt[:40]!r}...)",
                                     "lower max_new_tokens or shorten the prompt")
        width = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention[row, width - len(seq):] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else \
            {"do_sample": False}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derived_seed("generate", seed, start))
            generated = lm.model.generate(input_ids=ids.to(device), attention_mask=attention.to(device),
                                          max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                          **sampling)
        new = generated[:, width:]
        outputs.extend(lm.tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs
