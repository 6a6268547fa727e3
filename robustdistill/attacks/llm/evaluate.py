"""Greedy responses to prompts carrying a suffix, judged: how GCG checks success, on any model.

Works on the suffix's TEXT, so a suffix optimised on one model (the teacher) can be evaluated on another with a
different tokenizer (the student): the transfer half of the distillation audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from robustdistill.attacks.judges import Judge
from robustdistill.errors import UserInputError
from robustdistill.models.lm_text import generate
from robustdistill.limits import check_int


class Outcome(NamedTuple):
    response: str
    success: bool


def user_message(prompt: str, suffix: str) -> str:
    """The attacked user turn: the prompt, a space, the suffix (the layout GCG optimises)."""
    return f"{prompt} {suffix}" if suffix else prompt


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
    responses = generate(lm, [user_message(p, suffix) for p in prompts], max_new_tokens, batch_size)
    verdicts = judge.judge(list(prompts), responses)
    return [Outcome(r, bool(v)) for r, v in zip(responses, verdicts)]
