"""CIFAR-10 folders written in exactly the official formats (tiny: a few records per batch), and hostile pickles."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from robustdistill.data import DataSpec, load_split, load_splits
from robustdistill.data.cifar10 import DEFAULT_CLASSES
from robustdistill.errors import UserInputError

PER_BATCH = 20
FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the official batches: str as BINSTRING, numpy.core globals."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global
    dispatch[types.FunctionType] = save_global


def make_content(seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    content = {}
    for name in FILES:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in np.arange(PER_BATCH) % 10]  # every class twice per batch
        content[name] = (data, labels)
    return content


def write_python(folder: Path, content: dict[str, tuple[np.ndarray, list[int]]], py2_style: bool) -> Path:
    folder.mkdir(parents=True)
    for index, (name, (data, labels)) in enumerate(content.items()):
        label = b"testing batch 1 of 1" if name == "test_batch" else f"training batch {index + 1} of 5".encode()
        batch = {
            b"batch_label": label,
            b"labels": labels,
            b"data": data,
            b"filenames": [f"image_{index}_{i}.png".encode() for i in range(len(labels))],
        }
        with open(folder / name, "wb") as handle:
            if py2_style:
                Py2StylePickler(handle, protocol=2).dump(batch)
            else:
                pickle.dump(batch, handle, protocol=2)
    meta = {b"num_cases_per_batch": PER_BATCH, b"label_names": [n.encode() for n in DEFAULT_CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder


def write_binary(folder: Path, content: dict[str, tuple[np.ndarray, list[int]]]) -> Path:
    folder.mkdir(parents=True)
    for name, (data, labels) in content.items():
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(DEFAULT_CLASSES) + "\n\n")
    return folder


@pytest.fixture(scope="module")
def content() -> dict[str, tuple[np.ndarray, list[int]]]:
    return make_content()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, content: dict) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cifar")
    return {
        "python": write_python(base / "py" / "cifar-10-batches-py", content, py2_style=False),
        "python2": write_python(base / "py2" / "cifar-10-batches-py", content, py2_style=True),
        "binary": write_binary(base / "bin" / "cifar-10-batches-bin", content),
    }


@pytest.mark.parametrize("fmt", ["python", "python2", "binary"])
@pytest.mark.parametrize("use_parent", [False, True])
def test_loads_official_formats(folders: dict[str, Path], content: dict, fmt: str, use_parent: bool) -> None:
    root = folders[fmt].parent if use_parent else folders[fmt]
    splits = load_splits({"kind": "cifar10", "root": str(root)})
    assert {name: len(s) for name, s in splits.items()} == {"train": 80, "val": 20, "test": PER_BATCH}
    for split in splits.values():
        assert split.input_shape == (3, 32, 32)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.classes == DEFAULT_CLASSES
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    # Rebuild test image 3 by hand from the written bytes: R, G, B planes of 32x32, row-major.
    data, labels = content["test_batch"]
    row = data[3]
    pixel = lambda c, h, w: row[c * 1024 + h * 32 + w] / 255.0  # noqa: E731
    test = splits["test"]
    assert int(test.indices[3]) == 3 and int(test.y[3]) == labels[3]
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 31, 0)]:
        assert float(test.x[3, c, h, w]) == pytest.approx(pixel(c, h, w), abs=1e-7)
    # Train/val index the concatenated training pool (batch 1 first).
    pool = np.concatenate([content[f"data_batch_{i}"][0] for i in range(1, 6)])
    train = splits["train"]
    expected = torch.from_numpy(pool[train.indices.numpy()].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    assert torch.equal(train.x, expected)
    assert set(train.indices.tolist()).isdisjoint(splits["val"].indices.tolist())
    assert set(splits["val"].y.tolist()) == set(range(10))  # stratified: 2 of each class


def test_formats_give_identical_tensors(folders: dict[str, Path]) -> None:
    loaded = {fmt: load_splits({"kind": "cifar10", "root": str(path)}) for fmt, path in folders.items()}
    for split in ("train", "val", "test"):
        reference = loaded["binary"][split]
        for fmt in ("python", "python2"):
            other = loaded[fmt][split]
            assert torch.equal(reference.x, other.x)
            assert torch.equal(reference.y, other.y)
            assert torch.equal(reference.indices, other.indices)
            assert reference.fingerprint == other.fingerprint  # same content, different folder


def test_repickled_copy_with_str_keys_and_protocol_5(tmp_path: Path, folders: dict[str, Path], content: dict) -> None:
    # Users sometimes re-save the batches from Python 3: str keys, the highest protocol. Still only numpy inside.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (data, labels) in content.items():
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": np.array(labels)}, handle, protocol=5)
    for split in ("train", "test"):
        ours = load_split({"kind": "cifar10", "root": str(folder)}, split)
        reference = load_split({"kind": "cifar10", "root": str(folders["binary"])}, split)
        assert torch.equal(ours.x, reference.x) and torch.equal(ours.y, reference.y)


class _OpenFile:
    """Unpickling this calls builtins.open(path, "w"): it creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (builtins.open, (self.path, "w"))


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def _hostile_folder(tmp_path: Path, content: dict, payload: object) -> Path:
    folder = write_python(tmp_path / "cifar-10-batches-py", content, py2_style=False)
    data, labels = content["data_batch_1"]
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"labels": labels, b"data": data, b"filenames": [payload]}, handle, protocol=2)
    return folder


def test_hostile_pickle_open_is_refused(tmp_path: Path, content: dict) -> None:
    # The payload is real: an ordinary unpickle creates the file.
    probe = tmp_path / "probe-created-by-plain-pickle"
    pickle.loads(pickle.dumps(_OpenFile(str(probe)), protocol=2)).close()
    assert probe.exists()

    target = tmp_path / "pwned"
    folder = _hostile_folder(tmp_path, content, _OpenFile(str(target)))
    with pytest.raises(UserInputError) as info:
        load_split({"kind": "cifar10", "root": str(folder), "split_seed": 101}, "train")
    assert info.value.field == "data.root"
    assert "refuses to unpickle io.open" in str(info.value)  # builtins.open pickles under its io name
    assert not target.exists()


def test_hostile_pickle_system_is_refused(tmp_path: Path, content: dict) -> None:
    target = tmp_path / "pwned-by-system"
    folder = _hostile_folder(tmp_path, content, _System(f"touch {target}"))
    with pytest.raises(UserInputError, match=r"data\.root.*refuses to unpickle .*system"):
        load_split({"kind": "cifar10", "root": str(folder), "split_seed": 102}, "train")
    assert not target.exists()


def test_codecs_encode_only_latin1(tmp_path: Path, content: dict) -> None:
    # _codecs.encode is admitted for protocol-2 bytes, but only with the latin1 codec it needs.
    folder = write_python(tmp_path / "cifar-10-batches-py", content, py2_style=False)
    stream = io.BytesIO()
    pickle.dump({b"data": content["data_batch_1"][0], b"labels": content["data_batch_1"][1]}, stream, protocol=2)
    hostile = stream.getvalue().replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00base64", 1)
    assert hostile != stream.getvalue()
    (folder / "data_batch_1").write_bytes(hostile)
    with pytest.raises(UserInputError, match=r"data\.root: wrong format"):
        load_split({"kind": "cifar10", "root": str(folder), "split_seed": 103}, "train")


def test_missing_folder_and_files(tmp_path: Path, content: dict) -> None:
    with pytest.raises(UserInputError, match=r"data\.root: folder .* does not exist"):
        load_split({"kind": "cifar10", "root": str(tmp_path / "nope")}, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"data\.root: .* holds no CIFAR-10 batches"):
        load_split({"kind": "cifar10", "root": str(tmp_path / "empty")}, "train")
    folder = write_binary(tmp_path / "partial", content)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(UserInputError, match=r"data\.root: .* lacks data_batch_4\.bin"):
        load_split({"kind": "cifar10", "root": str(folder)}, "train")


def test_binary_wrong_length_names_file(tmp_path: Path, content: dict) -> None:
    folder = write_binary(tmp_path / "cifar-10-batches-bin", content)
    with open(folder / "data_batch_2.bin", "ab") as handle:
        handle.write(b"\x00" * 10)
    with pytest.raises(UserInputError, match=r"data\.root: wrong format: .*data_batch_2\.bin is"):
        load_split({"kind": "cifar10", "root": str(folder)}, "train")


def test_labels_out_of_range(tmp_path: Path, content: dict) -> None:
    bad = dict(content)
    data, labels = bad["test_batch"]
    bad["test_batch"] = (data, [*labels[:-1], 12])
    for folder in (write_binary(tmp_path / "b", bad), write_python(tmp_path / "p", bad, py2_style=False)):
        with pytest.raises(UserInputError, match=r"data\.root: .*test_batch.* holds label 12"):
            load_split({"kind": "cifar10", "root": str(folder)}, "test")


def test_garbage_pickle_is_wrong_format(tmp_path: Path, content: dict) -> None:
    folder = write_python(tmp_path / "cifar-10-batches-py", content, py2_style=False)
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(UserInputError, match=r"data\.root: wrong format"):
        load_split({"kind": "cifar10", "root": str(folder)}, "test")
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(UserInputError, match=r"data\.root: wrong format: .*expected uint8 \(N, 3072\)"):
        load_split({"kind": "cifar10", "root": str(folder)}, "test")


def test_val_fraction_empty(folders: dict[str, Path]) -> None:
    with pytest.raises(UserInputError, match=r"data\.val_fraction: the val split is empty"):
        load_split(DataSpec(kind="cifar10", root=str(folders["binary"]), val_fraction=0.001), "val")
