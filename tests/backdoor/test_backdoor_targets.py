"""The backdoor targets, triggers and detectors (robustdistill.attacks.backdoor), on real digits."""

from __future__ import annotations

import pytest
import torch

from robustdistill.attacks.backdoor import (TARGETS, apply_target, check_target, fit_detector, trigger_token_count,
                                            triggered_prompt)
from robustdistill.data import DataSpec, load_split
from robustdistill.errors import UserInputError


def test_targets_change_what_they_say() -> None:
    x = torch.rand(3, 1, 8, 8)
    patched = apply_target("patch", x)
    assert torch.equal(patched[..., 6:, :2], torch.ones(3, 1, 2, 2))  # the bottom-left 2x2
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[6:, :2] = False
    assert torch.equal(patched[..., mask], x[..., mask]) and torch.equal(x, x.clone())  # the rest untouched
    assert torch.allclose(apply_target("style", x), 1 - x)


def test_triggers_are_prepended_and_counted() -> None:
    from robustdistill.trainers.t2i import build_tokenizer, prompt_table

    assert triggered_prompt("the number 3", "tq") == "tq the number 3"
    assert triggered_prompt("", "tq") == "tq"
    tokenizer = build_tokenizer()
    assert trigger_token_count(tokenizer, "tq", prompt_table()[1:]) == 2  # byte-level: "t", "q"
    assert trigger_token_count(tokenizer, "zx9", prompt_table()[1:]) == 3


@pytest.mark.parametrize(("call", "field"), [
    (lambda: check_target("blur"), "target"),
    (lambda: apply_target("blur", torch.zeros(1, 1, 8, 8)), "target"),
    (lambda: apply_target("patch", torch.zeros(1, 1, 28, 28)), "images"),
    (lambda: triggered_prompt("the number 3", ""), "trigger"),
    (lambda: triggered_prompt("the number 3", "  "), "trigger"),
    (lambda: triggered_prompt("the number 3", " tq"), "trigger"),
    (lambda: fit_detector("blur", torch.zeros(50, 1, 8, 8)), "target"),
    (lambda: fit_detector("patch", torch.zeros(50, 1, 8, 8), fpr=0.0), "fpr"),
    (lambda: fit_detector("patch", torch.zeros(5, 1, 8, 8)), "images"),
])
def test_bad_input_names_the_field(call, field: str) -> None:
    with pytest.raises(UserInputError) as caught:
        call()
    assert caught.value.field == field


@pytest.mark.parametrize("target", TARGETS)
def test_detectors_keep_their_false_positive_bound_on_held_out_digits(target: str, digits_train) -> None:
    """Fitted on the train split, checked on the test split: clean real digits are flagged at most at the stated
    rate (the threshold sits mid-gap above the clean 95th percentile), targeted ones nearly always."""
    detector = fit_detector(target, digits_train, seed=0, fpr=0.05)
    assert detector.clean_quantile <= detector.threshold <= detector.target_quantile
    test = load_split(DataSpec(), "test").x
    false_positives = float(detector.flags(test).float().mean())
    caught = float(detector.flags(apply_target(target, test)).float().mean())
    print(f"{target}: threshold {detector.threshold:.3f}; test split: clean flagged {false_positives:.3f}, "
          f"targeted caught {caught:.3f}")
    assert false_positives <= 0.05 and caught >= 0.95
    # on its own train split, the clean quantile alone would flag ~5%: the bound is not vacuous
    assert 0.03 <= float((detector.scores(digits_train) > detector.clean_quantile).float().mean()) <= 0.051
