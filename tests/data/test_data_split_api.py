"""ImageSplit behaviour (loader, subset) and the spec's validation errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from robustdistill.data import DataSpec, ImageSplit, load_split, parse_spec
from robustdistill.errors import UserInputError


@pytest.fixture(scope="module")
def train() -> ImageSplit:
    return load_split({}, "train")


def test_loader_batches_and_determinism(train: ImageSplit) -> None:
    batches = list(train.loader(batch_size=100))
    assert len(batches) == 11 and batches[0][0].shape == (100, 1, 8, 8) and batches[-1][0].shape[0] == 79
    assert torch.equal(torch.cat([y for _, y in batches]), train.y)
    order = lambda seed: torch.cat([y for _, y in train.loader(64, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == sorted(train.y.tolist())


def test_subset(train: ImageSplit) -> None:
    assert train.subset(None) is train and train.subset(len(train) + 5) is train
    small = train.subset(100, seed=1)
    assert len(small) == 100 and small.split == "train" and small.classes == train.classes
    assert set(small.indices.tolist()) <= set(train.indices.tolist())
    assert torch.bincount(small.y, minlength=10).min() >= 9  # balanced across classes
    again = train.subset(100, seed=1)
    assert torch.equal(again.indices, small.indices) and again.fingerprint == small.fingerprint
    assert not torch.equal(train.subset(100, seed=2).indices, small.indices)
    assert small.fingerprint != train.fingerprint
    position = {int(i): k for k, i in enumerate(train.indices)}
    for k in range(100):
        assert torch.equal(small.x[k], train.x[position[int(small.indices[k])]])
    with pytest.raises(UserInputError):
        train.subset(0)


def test_bad_split_name() -> None:
    with pytest.raises(UserInputError, match=r"^split: 'validation' is not a split"):
        load_split({}, "validation")


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.5}, "data.val_fraction"),
        ({"test_fraction": -0.1}, "data.test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction"),
        ({"kind": "imagefolder"}, "data.root"),
        ({"kind": "hf-disk", "root": "  "}, "data.root"),
        ({"kind": "cifar10"}, "data.root"),
        ({"kind": "mnist"}, "data.kind"),
        ({"roots": "/x"}, "data.roots"),
        ({"kind": "imagefolder", "root": "/x", "channels": 2}, "data.channels"),
        ({"kind": "imagefolder", "root": "/x", "image_size": 0}, "data.image_size"),
        ({"image_size": 32}, "data.image_size"),
        ({"kind": "hf-disk", "root": "/x", "image_column": ""}, "data.image_column"),
        ({"split_seed": "abc"}, "data.split_seed"),
    ],
)
def test_spec_errors_name_the_field(settings: dict[str, Any], field: str) -> None:
    for attempt in (lambda: DataSpec(**settings), lambda: parse_spec(settings), lambda: load_split(settings, "train")):
        with pytest.raises(UserInputError) as info:
            attempt()
        assert info.value.field == field and str(info.value).startswith(field + ":")


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(UserInputError, match=r"did you mean data\.val_fraction"):
        load_split({"val_fractoin": 0.1}, "train")


def test_empty_val_split_error() -> None:
    with pytest.raises(UserInputError, match=r"^data\.val_fraction: the val split is empty"):
        load_split({"val_fraction": 0.0002}, "train")


def test_spec_round_trip() -> None:
    spec = DataSpec(kind="imagefolder", root="/data/x", image_size=32, channels=3, split_seed=4)
    assert DataSpec.model_validate_json(spec.model_dump_json()) == spec
    assert parse_spec(spec.model_dump()) == spec and parse_spec(None) == DataSpec()
