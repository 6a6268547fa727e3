"""Hostile datasets are sized from their headers and metadata before anything is decoded or materialised
(issue 11 item 3). The end-to-end cases (a zero-stride CIFAR batch claiming 10,001 images, an oversize binary
batch, an image over the pixel limit, undecodable or bomb images in a saved HF dataset) run through the CLI in
tests/cli/test_bad_input.py; these cover what that table does not."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from robustdistill import limits
from robustdistill.data import load_split
from robustdistill.errors import UserInputError

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _Strided:
    """Unpickles to an ndarray of `shape` over one byte of memory (all strides 0)."""

    def __init__(self, shape: tuple[int, ...], dtype: str = "u1") -> None:
        self.shape, self.dtype = shape, dtype

    def __reduce__(self) -> tuple:
        return (np.ndarray, (self.shape, np.dtype(self.dtype), b"\x00" * 8, 0, (0,) * len(self.shape)))


def _cifar(folder: Path, hostile: dict) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in BATCHES:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(20)]}
        with open(folder / name, "wb") as handle:
            pickle.dump({**batch, **hostile} if name == "data_batch_2" else batch, handle, protocol=2)
    return folder


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param({b"data": _Strided((20, 3072))}, id="zero-stride-data"),  # the format's shape, but no real array
        pytest.param({b"labels": _Strided((20,), "i8")}, id="zero-stride-labels-of-the-right-length-load"),
        pytest.param({b"data": _Strided((10_001, 3072)), b"labels": _Strided((10_001,), "i8")}, id="rows-over-format"),
        pytest.param({b"labels": list(range(10)) * 3}, id="labels-longer-than-data"),
    ],
)
def test_cifar10_python_batch_checked_before_materialising(tmp_path: Path, hostile: dict) -> None:
    folder = _cifar(tmp_path / "cifar-10-batches-py", hostile)
    spec = {"kind": "cifar10", "root": str(folder)}
    if b"data" not in hostile and isinstance(hostile[b"labels"], _Strided):
        # Zero-stride *labels* of the right length hold nothing hostile: 20 labels are 20 labels.
        assert len(load_split(spec, "train").y) > 0
        return
    with pytest.raises(UserInputError, match=r"data\.root: wrong format: .*data_batch_2"):
        load_split(spec, "train")


def test_cifar10_pickle_larger_than_the_format_is_refused_unread(tmp_path: Path) -> None:
    folder = _cifar(tmp_path / "cifar-10-batches-py", {})
    with open(folder / "test_batch", "r+b") as handle:
        handle.truncate(100 << 20)  # sparse: nothing is written; an official batch is 31 MB
    with pytest.raises(UserInputError, match=r"data\.root: wrong format: .*test_batch is .* bytes, more than"):
        load_split({"kind": "cifar10", "root": str(folder)}, "test")


def _png(size: int) -> bytes:
    stream = io.BytesIO()
    PILImage.new("L", (size, size), 128).save(stream, format="PNG")
    return stream.getvalue()


def test_dataset_over_the_memory_budget_is_refused_from_its_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    rows = [{"bytes": _png(16), "path": None}] * 40
    Dataset.from_dict({"image": rows, "label": [i % 2 for i in range(40)]}, features=features).save_to_disk(str(tmp_path / "hf"))
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(20):
            (tmp_path / "images" / label / f"{i}.png").write_bytes(_png(16))
    specs = [{"kind": "hf-disk", "root": str(tmp_path / "hf")}, {"kind": "imagefolder", "root": str(tmp_path / "images")}]
    for spec in specs:
        assert load_split(spec, "train").input_shape == (1, 16, 16)  # the real data fits
    # A budget of 39 images of 16x16: the same data is now refused before a single further image is decoded.
    monkeypatch.setattr(limits, "memory_budget", lambda: 39 * 256)
    for spec in specs:
        with pytest.raises(UserInputError, match=r"data\.root: 40 images of shape \(1, 16, 16\) need"):
            load_split({**spec, "split_seed": 1}, "train")  # another seed: not the cached load
