"""Greedy responses to prompts carrying a suffix, judged: how GCG checks success, on any model.

Works on the suffix's TEXT, so a suffix optimised on one model (the teacher) can be evaluated on another with a
different tokenizer (the student): the transfer half of the distillation audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from robustdistill.attacks.judges import Judge
from robustdistill.errors import UserInputError
from robustdistill.limits import check_int


class Outcome(NamedTuple):
    response: str
    success: bool


def user_message(prompt: str, suffix: str) -> str:
    """The attacked user turn: the prompt, a space, the suffix (the layout GCG optimises)."""
    return f"{prompt} {suffix}" if suffix else prompt


def greedy_responses(lm: Any, texts: Sequence[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy continuations of already-templated texts, batched with left padding (deterministic)."""
    tokenizer, model = lm.tokenizer, lm.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserInputError("tokenizer", "has neither a pad nor an eos token", "add a pad_token to its config")
    device = lm.device
    responses: list[str] = []
    for start in range(0, len(texts), batch_size):
        rows = tokenizer(list(texts[start:start + batch_size]), add_special_tokens=False)["input_ids"]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad)
        responses += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return responses


def evaluate_suffix(lm: Any, prompts: Sequence[str], suffix: str, judge: Judge, max_new_tokens: int = 64,
                    batch_size: int = 16) -> list[Outcome]:
    """For each prompt: the model's greedy response to ``prompt + " " + suffix`` (chat template, generation
    prompt) and the judge's verdict (True = jailbroken)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise UserInputError("prompts", "no prompts given", "pass at least one prompt")
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1, 4096)
    batch_size = check_int("batch_size", batch_size, 1, 4096)
    texts = [lm.format_chat([{"role": "user", "content": user_message(p, suffix)}]) for p in prompts]
    responses = greedy_responses(lm, texts, max_new_tokens, batch_size)
    verdicts = judge.judge(list(prompts), responses)
    return [Outcome(r, bool(v)) for r, v in zip(responses, verdicts)]
