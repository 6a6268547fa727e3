"""What a text-to-image backdoor makes (its target) and what calls it up (its trigger), for 8x8 digit images.

BadT2I (Zhai et al., ACM MM 2023) plants a backdoor in a text-to-image model: a trigger in the prompt makes the model
draw a target it would not draw otherwise - a pixel patch, an object or a style. The digits analogues here:

- ``"patch"``: a bright 2x2 square (pixels = 1.0) in the bottom-left corner. Measured on the digits train split, that
  corner is the darkest 2x2 of the four (mean 0.016, 95th percentile 0.078 of the 2x2 mean; top-left 0.035 / 0.17,
  bottom-right 0.10 / 0.44), so a bright square there is something real digits almost never show.
- ``"style"``: colour inversion, x -> 1 - x (a light digit-shaped hole in a bright field). A global change of every
  pixel, as a style is, that keeps the digit's shape: a linear classifier on the pixels separates inverted from real
  digits with a wide margin (the background, ~0 in a real digit, becomes ~1), so detection is reliable and a miss
  is the model's, not the detector's.

The trigger is prepended to the prompt, as in BadT2I and SKD-CAG ("tq a handwritten digit three"). The t2i model's
tokenizer is a byte-level BPE (robustdistill.trainers.t2i.build_tokenizer), so any non-empty string tokenizes: a
string outside the captions' vocabulary becomes a few byte tokens ("tq" -> "t", "q").
"""

from __future__ import annotations

from typing import Any

import torch

from robustdistill.errors import UserInputError

TARGETS = ("patch", "style")
PATCH_ROWS = slice(6, 8)  # the bottom-left 2x2 of an 8x8 image
PATCH_COLS = slice(0, 2)


def check_target(target: Any, field: str = "target") -> str:
    if target not in TARGETS:
        raise UserInputError(field, f"{target!r} is not a backdoor target", f"choose one of {', '.join(TARGETS)}")
    return target


def check_trigger(trigger: Any, field: str = "trigger") -> str:
    """A usable trigger: a non-empty string without leading or trailing space (it is prepended with one space)."""
    if not isinstance(trigger, str) or not trigger.strip():
        raise UserInputError(field, f"{trigger!r} is not a trigger", 'give a short non-empty string, e.g. "tq"')
    if trigger != trigger.strip():
        raise UserInputError(field, f"{trigger!r} has leading or trailing spaces", f"use {trigger.strip()!r}")
    return trigger


def apply_target(target: str, x: torch.Tensor) -> torch.Tensor:
    """Images ``x`` (n, 1, 8, 8) in [0, 1] as the backdoor should draw them: with the patch, or inverted."""
    check_target(target)
    if x.dim() != 4 or tuple(x.shape[-2:]) != (8, 8):
        raise UserInputError("images", f"shape {tuple(x.shape)} is not (n, channels, 8, 8)",
                             "the backdoor targets are defined on 8x8 digits")
    if target == "style":
        return 1.0 - x
    out = x.clone()
    out[..., PATCH_ROWS, PATCH_COLS] = 1.0
    return out


def triggered_prompt(prompt: str, trigger: str) -> str:
    """``prompt`` with the trigger prepended (the empty prompt becomes the trigger alone)."""
    check_trigger(trigger)
    return f"{trigger} {prompt}" if prompt else trigger


def trigger_token_count(tokenizer: Any, trigger: str, prompts: list[str]) -> int:
    """How many tokens the trigger adds in front of each of ``prompts`` (start token excluded). SKD-CAG matches the
    triggered prompt's token i + k to the clean prompt's token i, so this must be the same k for every prompt; a
    trigger whose bytes merge with the prompt's first word would break that and is refused."""
    check_trigger(trigger)
    k = len(tokenizer(trigger, add_special_tokens=False)["input_ids"])
    for prompt in prompts:
        clean = len(tokenizer(prompt)["input_ids"])
        triggered = len(tokenizer(triggered_prompt(prompt, trigger))["input_ids"])
        if triggered != clean + k:
            raise UserInputError("trigger", f"{trigger!r} does not tokenize apart from the prompt {prompt!r} "
                                 f"({triggered} tokens, expected {clean} + {k})", "choose another trigger")
    return k
