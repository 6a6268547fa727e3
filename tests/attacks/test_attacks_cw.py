"""Carlini-Wagner L2 done right: correct for negative logits (where torchattacks' CW fails), best example kept per
sample across the binary search over c, and the optional L2 eps-ball."""

from __future__ import annotations

import pytest
import torch
from test_attacks_support import Shifted, digits_model, test_points

from robustdistill import attacks
from robustdistill.attacks.cw_l2 import cw_margin


def peer() -> object:
    """torchattacks, the peer library, for the tests that compare with it; only those are skipped without it."""
    return pytest.importorskip("torchattacks")


def success(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def test_margin_masks_the_true_class_correctly_for_negative_logits() -> None:
    logits = torch.tensor([[-5.0, -3.0, -10.0], [-1.0, -8.0, -2.0]])
    y = torch.tensor([0, 0])
    # Z_y - max_{i != y} Z_i: -5 - (-3) = 2 below the boundary ... and 1 above it
    assert torch.allclose(cw_margin(logits, y, kappa=100.0), torch.tensor([-5.0 + 3.0, -1.0 + 2.0]))
    assert torch.allclose(cw_margin(logits, y, kappa=0.0), torch.tensor([0.0, 1.0]))


def test_torchattacks_margin_is_flat_for_negative_logits() -> None:
    torchattacks = peer()
    logits = torch.tensor([[-5.0, -3.0, -10.0], [-1.0, -8.0, -2.0]])
    y = torch.tensor([0, 0])
    # torchattacks masks with 0: for all-negative logits both terms are 0, so its loss is flat
    ta = torchattacks.CW(torch.nn.Linear(3, 3))
    assert torch.equal(ta.f(logits, y), torch.zeros(2))


def test_cw_l2_breaks_a_model_with_all_negative_logits_where_torchattacks_fails() -> None:
    torchattacks = peer()
    model = digits_model()
    x, y = test_points(16)
    shifted = Shifted(model, 1000.0)  # the same real model, every logit moved below zero
    with torch.no_grad():
        assert float(shifted(x).max()) < 0
        assert torch.equal(shifted(x).argmax(1), model(x).argmax(1))
    steps, searches = 100, 9  # 900 iterations each

    ours = attacks.create("cw-l2", steps=steps, binary_search_steps=searches)
    ours(shifted, x, y)
    ours_rate = float(ours.last_success.float().mean())

    theirs_rate = float(success(shifted, torchattacks.CW(shifted, c=1, steps=steps * searches)(x, y), y).float().mean())
    theirs_plain = float(success(model, torchattacks.CW(model, c=1, steps=steps * searches)(x, y), y).float().mean())

    assert ours_rate >= 15 / 16, ours_rate
    # The bug: the same attack on the same model succeeds on positive-logit outputs and not on shifted ones.
    assert theirs_rate < ours_rate and theirs_rate < theirs_plain, (theirs_rate, theirs_plain)


def test_cw_l2_keeps_the_smallest_adversarial_per_sample() -> None:
    """The search's first step is exactly the single-c run; keeping the best per sample can only improve on it."""
    model = digits_model()
    x, y = test_points(24)
    single = attacks.create("cw-l2", steps=40, binary_search_steps=1, initial_const=1.0)
    search = attacks.create("cw-l2", steps=40, binary_search_steps=4, initial_const=1.0)
    x_single, x_search = single(model, x, y), search(model, x, y)
    l2_single = (x_single - x).flatten(1).norm(dim=1)
    l2_search = (x_search - x).flatten(1).norm(dim=1)

    assert bool((search.last_success | ~single.last_success).all())  # every sample fooled once stays fooled
    both = single.last_success & search.last_success
    assert bool((l2_search[both] <= l2_single[both] + 1e-5).all())
    assert float(l2_search[both].sum()) < float(l2_single[both].sum())  # and the search does find smaller ones
    assert torch.allclose(search.last_l2, l2_search, atol=1e-5)
    # samples never fooled come back unchanged
    assert torch.equal(x_search[~search.last_success], x[~search.last_success])


def test_cw_l2_eps_keeps_only_examples_inside_the_ball() -> None:
    model = digits_model()
    x, y = test_points(16)
    free = attacks.create("cw-l2", steps=30, binary_search_steps=3, initial_const=1.0)
    free(model, x, y)
    eps = float(free.last_l2[free.last_success].median())
    bounded = attacks.create("cw-l2", eps=eps, steps=30, binary_search_steps=3, initial_const=1.0)
    x_adv = bounded(model, x, y)
    assert bool(((x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-5).all())
    # the eps-bounded run succeeds exactly where the unbounded one found an example inside the ball
    assert torch.equal(bounded.last_success, free.last_success & (free.last_l2 <= eps))
