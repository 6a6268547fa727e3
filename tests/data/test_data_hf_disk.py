"""Hugging Face datasets saved with save_to_disk: Image + ClassLabel columns, array columns, DatasetDicts, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage

from robustdistill.data import load_split, load_splits
from robustdistill.errors import UserInputError

NAMES = ["ant", "bee", "cow", "dog"]


def image_dataset(n: int, seed: int = 0, size: int = 10) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    dataset = Dataset.from_dict({"img": [PILImage.fromarray(p) for p in pixels], "target": [i % 4 for i in range(n)]})
    dataset = dataset.cast_column("img", Image()).cast_column("target", ClassLabel(names=NAMES))
    return dataset, pixels


def test_single_dataset_is_split(tmp_path: Path) -> None:
    dataset, pixels = image_dataset(40)
    dataset.save_to_disk(str(tmp_path / "ds"))
    spec = {"kind": "hf-disk", "root": str(tmp_path / "ds"), "image_column": "img", "label_column": "target"}
    splits = load_splits(spec)
    assert {k: len(v) for k, v in splits.items()} == {"train": 24, "val": 8, "test": 8}
    for split in splits.values():
        assert split.classes == tuple(NAMES) and split.input_shape == (3, 10, 10)
        for k, index in enumerate(split.indices.tolist()):
            assert int(split.y[k]) == index % 4
        k = 0
        expected = torch.from_numpy(pixels[int(split.indices[k])].transpose(2, 0, 1).astype(np.float32) / 255.0)
        assert torch.equal(split.x[k], expected)
    assert set().union(*(set(s.indices.tolist()) for s in splits.values())) == set(range(40))


def test_dataset_dict_official_splits(tmp_path: Path) -> None:
    train, _ = image_dataset(30, seed=1)
    test, test_pixels = image_dataset(12, seed=2)
    DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    spec = {"kind": "hf-disk", "root": str(tmp_path / "dd"), "image_column": "img", "label_column": "target"}
    splits = load_splits(spec)
    assert {k: len(v) for k, v in splits.items()} == {"train": 24, "val": 6, "test": 12}
    assert splits["test"].indices.tolist() == list(range(12))  # the official test split, in order
    assert torch.equal(splits["test"].x[5], torch.from_numpy(test_pixels[5].transpose(2, 0, 1) / 255.0).float())
    assert set(splits["train"].indices.tolist()).isdisjoint(splits["val"].indices.tolist())

    validation, _ = image_dataset(8, seed=3)
    DatasetDict({"train": train, "validation": validation, "test": test}).save_to_disk(str(tmp_path / "dd3"))
    full = load_splits({**spec, "root": str(tmp_path / "dd3")})
    assert {k: len(v) for k, v in full.items()} == {"train": 30, "val": 8, "test": 12}


def test_array_column_and_plain_int_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 6, 6), dtype=np.uint8)
    features = Features({"image": Sequence(Sequence(Value("uint8"))), "label": Value("int64")})
    dataset = Dataset.from_dict({"image": pixels.tolist(), "label": [i % 3 for i in range(30)]}, features=features)
    dataset.save_to_disk(str(tmp_path / "arr"))
    split = load_split({"kind": "hf-disk", "root": str(tmp_path / "arr")}, "train")
    assert split.classes == ("0", "1", "2") and split.input_shape == (1, 6, 6)
    index = int(split.indices[0])
    assert torch.equal(split.x[0, 0], torch.from_numpy(pixels[index] / 255.0).float())
    resized = load_split({"kind": "hf-disk", "root": str(tmp_path / "arr"), "image_size": 4, "channels": 3}, "val")
    assert resized.input_shape == (3, 4, 4)


def test_missing_column_lists_available(tmp_path: Path) -> None:
    dataset, _ = image_dataset(20)
    dataset.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserInputError, match=r"^data\.image_column: column 'image' .*available columns: img, target"):
        load_split({"kind": "hf-disk", "root": str(tmp_path / "ds")}, "train")
    with pytest.raises(UserInputError, match=r"^data\.label_column: column 'label' .*available columns: img, target"):
        load_split({"kind": "hf-disk", "root": str(tmp_path / "ds"), "image_column": "img"}, "train")


def test_negative_label(tmp_path: Path) -> None:
    dataset = Dataset.from_dict({"image": [np.zeros((4, 4), np.uint8).tolist()] * 20, "label": [0, 1] * 9 + [1, -1]})
    dataset.save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(UserInputError, match=r"^data\.label_column: split 'train' row 19 has label -1"):
        load_split({"kind": "hf-disk", "root": str(tmp_path / "neg")}, "train")


def test_not_a_saved_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"^data\.root: folder .* does not exist"):
        load_split({"kind": "hf-disk", "root": str(tmp_path / "missing")}, "train")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("hello")
    with pytest.raises(UserInputError, match=r"^data\.root: .* is not a Hugging Face dataset saved with save_to_disk"):
        load_split({"kind": "hf-disk", "root": str(tmp_path / "plain")}, "train")


def test_differing_image_sizes(tmp_path: Path) -> None:
    images = [PILImage.new("RGB", (8, 8)) for _ in range(19)] + [PILImage.new("RGB", (9, 8))]
    dataset = Dataset.from_dict({"image": images, "label": [i % 2 for i in range(20)]}).cast_column("image", Image())
    dataset.save_to_disk(str(tmp_path / "sizes"))
    with pytest.raises(UserInputError, match=r"^data\.image_size: wrong image shape: split 'train' row 19 is 9x8"):
        load_split({"kind": "hf-disk", "root": str(tmp_path / "sizes")}, "train")
    assert load_split({"kind": "hf-disk", "root": str(tmp_path / "sizes"), "image_size": 8}, "test").input_shape == (
        3,
        8,
        8,
    )
