"""Shared by the attack tests: one real digits model, trained once per session (no tests in this module).

Imported by the other test_attacks_* modules (the test directory is on sys.path under pytest's default import
mode); the model is cached so that every module gets the same instance.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

import torch
from torch import nn

from robustdistill.data import ImageSplit, load_split
from robustdistill.models import Classifier

REPO = Path(__file__).resolve().parents[2]
DIGITS_EPS: float = tomllib.loads((REPO / "attacks" / "digits-linf.toml").read_text())["threat_model"]["eps"]


@functools.lru_cache(maxsize=1)
def digits_model() -> Classifier:
    """cnn-small trained 15 epochs with Adam (lr 2e-3) on the digits train split, seed 0; eval mode (~97% test)."""
    train = load_split({"kind": "digits"}, "train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Classifier.from_arch("cnn-small", num_classes=10, input_shape=(1, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for epoch in range(15):
        for x, y in train.loader(batch_size=64, shuffle=True, seed=epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@functools.lru_cache(maxsize=1)
def digits_test() -> ImageSplit:
    return load_split({"kind": "digits"}, "test")


def test_points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points of a class-balanced seeded subset of the digits test split."""
    subset = digits_test().subset(n, seed=0)
    return subset.x, subset.y


test_points.__test__ = False  # a helper, not a test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


class Shifted(nn.Module):
    """A real model whose logits are all moved down by a constant: same predictions, every logit negative."""

    def __init__(self, model: nn.Module, shift: float) -> None:
        super().__init__()
        self.model = model
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) - self.shift
