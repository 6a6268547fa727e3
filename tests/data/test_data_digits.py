"""The built-in digits data: shapes, ranges, a fixed stratified split, fingerprints; a hypothesis property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from robustdistill.data import DataSpec, ImageSplit, load_split, load_splits

N_DIGITS = 1797


@pytest.fixture(scope="module")
def splits() -> dict[str, ImageSplit]:
    return load_splits(DataSpec())


def test_shapes_dtypes_ranges(splits: dict[str, ImageSplit]) -> None:
    for name, split in splits.items():
        assert split.split == name
        assert split.x.ndim == 4 and split.input_shape == (1, 8, 8)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64 and split.indices.dtype == torch.int64
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
        assert split.num_classes == 10 and split.classes == tuple("0123456789")
        assert len(split) == len(split.y) == len(split.indices) == split.x.shape[0]


def test_default_sizes_and_pixels_match_sklearn(splits: dict[str, ImageSplit]) -> None:
    assert {k: len(v) for k, v in splits.items()} == {"train": 1079, "val": 359, "test": 359}
    bunch = load_digits()
    train = splits["train"]
    expected = torch.from_numpy(bunch.images[train.indices.numpy()].astype(np.float32) / 16.0)[:, None]
    assert torch.equal(train.x, expected)
    assert torch.equal(train.y, torch.from_numpy(bunch.target[train.indices.numpy()]).long())


def test_disjoint_covering_stratified(splits: dict[str, ImageSplit]) -> None:
    sets = {name: set(split.indices.tolist()) for name, split in splits.items()}
    assert sum(len(s) for s in sets.values()) == N_DIGITS
    assert set().union(*sets.values()) == set(range(N_DIGITS))
    for split in splits.values():
        counts = torch.bincount(split.y, minlength=10)
        assert bool((counts > 0).all())
        # Stratified: each class's share is within a couple of examples of its share overall.
        assert float((counts.float() / len(split)).std()) < 0.01


def test_seed_determinism(splits: dict[str, ImageSplit]) -> None:
    again = load_split({"split_seed": 0}, "val")
    assert torch.equal(again.indices, splits["val"].indices) and again.fingerprint == splits["val"].fingerprint
    other = load_split({"split_seed": 1}, "val")
    assert not torch.equal(other.indices, splits["val"].indices)
    assert other.fingerprint != splits["val"].fingerprint


def test_fingerprints(splits: dict[str, ImageSplit]) -> None:
    prints = {split.fingerprint for split in splits.values()}
    assert len(prints) == 3 and all(len(p) == 64 for p in prints)
    assert load_split(DataSpec(), "train").fingerprint == splits["train"].fingerprint
    assert load_split({"val_fraction": 0.25}, "test").fingerprint != splits["test"].fingerprint


def test_returned_tensors_are_independent_of_the_cache(splits: dict[str, ImageSplit]) -> None:
    first = load_split({}, "test")
    first.x.zero_()
    assert float(load_split({}, "test").x.max()) == 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    val=st.floats(min_value=0.01, max_value=0.6),
    test=st.floats(min_value=0.01, max_value=0.6),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_random_fractions_disjoint_and_complete(val: float, test: float, seed: int) -> None:
    if val + test >= 0.95:
        return
    splits = load_splits({"val_fraction": val, "test_fraction": test, "split_seed": seed})
    sets = [set(s.indices.tolist()) for s in splits.values()]
    assert sum(len(s) for s in sets) == N_DIGITS
    assert set().union(*sets) == set(range(N_DIGITS))
    assert abs(len(splits["val"]) - val * N_DIGITS) <= 1 and abs(len(splits["test"]) - test * N_DIGITS) <= 1
