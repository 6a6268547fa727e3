"""Loss functions and batch helpers against values computed by hand."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.trainers.base import augment_batch, soft_cross_entropy
from robustdistill.trainers.kd import kd_loss
from robustdistill.trainers.trades import kl_batchmean


def test_kl_batchmean_is_kl_of_p_from_q_averaged_over_the_batch() -> None:
    p_logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p = [0.25, 0.75], [0.5, 0.5]
    q_logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # q = [0.5, 0.5], [0.25, 0.75]
    kl_1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_2 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert torch.isclose(kl_batchmean(p_logits, q_logits), torch.tensor((kl_1 + kl_2) / 2), atol=1e-6)
    assert kl_batchmean(p_logits, p_logits).abs() < 1e-7


def test_kd_loss_matches_hinton_with_t_squared() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([1])
    t, alpha = 2.0, 0.7
    p = torch.softmax(teacher / t, 1)
    q = torch.softmax(student / t, 1)
    kl = float((p * (p.log() - q.log())).sum())
    ce = float(-torch.log_softmax(student, 1)[0, 1])
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert math.isclose(float(kd_loss(student, teacher, y, t, alpha)), expected, rel_tol=1e-5)


def test_soft_cross_entropy_equals_hard_cross_entropy_on_one_hot() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0])
    expected = torch.nn.functional.cross_entropy(logits, y)
    assert torch.isclose(soft_cross_entropy(logits, torch.nn.functional.one_hot(y, 4).float()), expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["shift", "crop-flip", "none"]))
def test_augmentation_keeps_shape_range_and_content(seed: int, kind: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=generator)
    out = augment_batch(x, kind, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    if kind == "shift":
        # A shift by at most one pixel keeps the central 6x6 block inside the image: nothing is invented.
        for i in range(len(x)):
            assert any(
                torch.equal(out[i, :, 1:7, 1:7], x[i, :, 1 + dy : 7 + dy, 1 + dx : 7 + dx])
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )
    if kind == "none":
        assert torch.equal(out, x)
