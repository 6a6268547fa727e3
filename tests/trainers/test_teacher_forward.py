"""The shared speed-ups of the distillation trainers give the same numbers as the plain passes they replace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustdistill.models.architectures import SmallCNN
from robustdistill.trainers.adversarial import forward_both, mixes_samples
from robustdistill.trainers.teachers import inference_forward


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(10, 1, 8, 32).eval()


def test_inference_forward_matches_the_eager_teacher_and_feeds_backward() -> None:
    teacher = _cnn()
    forward = inference_forward(teacher, torch.rand(16, 1, 8, 8), trace=True)  # as on a user's unpinned CPU
    x = torch.rand(5, 1, 8, 8)  # a batch size the trace never saw
    with torch.no_grad():
        expected = teacher(x)
    got = forward(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not got.is_inference() and not got.requires_grad
    # The teacher's soft labels can be saved for the student's backward pass (an inference tensor could not).
    student = _cnn(1).train()
    loss = nn.functional.kl_div(torch.log_softmax(student(x), 1), torch.softmax(got, 1), reduction="batchmean")
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())


class _BatchDependent(nn.Module):
    """Control flow on the batch size: a trace records one branch, so the traced model is wrong for other sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        return out * 2 if x.shape[0] > 1 else out


def test_inference_forward_falls_back_to_eager_when_the_trace_is_wrong() -> None:
    model = _BatchDependent().eval()
    forward = inference_forward(model, torch.rand(8, 1, 8, 8), trace=True)
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(forward(x), model(x))


def test_inference_forward_refuses_a_training_mode_teacher() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        inference_forward(_cnn().train(), torch.rand(4, 1, 8, 8))


def test_forward_both_equals_two_passes_with_and_without_batchnorm() -> None:
    a, b = torch.rand(6, 1, 8, 8), torch.rand(4, 1, 8, 8)
    plain = _cnn().train()
    assert not mixes_samples(plain)
    first, second = forward_both(plain, a, b)
    assert torch.allclose(first, plain(a), atol=1e-6) and torch.allclose(second, plain(b), atol=1e-6)

    # With BatchNorm in train mode one stacked pass would normalise with the statistics of both batches together.
    torch.manual_seed(0)
    normed = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10)).train()
    assert mixes_samples(normed)
    first, second = forward_both(normed, a, b)
    assert torch.allclose(first, normed(a)) and torch.allclose(second, normed(b))
    assert not torch.allclose(normed(torch.cat([a, b]))[: len(a)], normed(a))
