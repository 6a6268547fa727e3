"""CIFAR-10 from the official extracted folder (python pickles or binary records); never downloads.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009. The python batches are pickles, and a
pickle can run arbitrary code when loaded, so they are read with an unpickler that admits only the handful of
numpy constructors the official files reference.
"""

from __future__ import annotations

import codecs
import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.data.pool import LoadedData, RawSplit, raw_split, two_way
from robustdistill.data.spec import DataSpec
from robustdistill.errors import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
RECORD = 1 + 3 * 32 * 32
# Every official batch (data_batch_1..5, test_batch) holds 10,000 images: a batch may hold fewer (a subset), never
# more, so a hostile folder cannot make the loader allocate more than the real dataset's 184 MB.
BATCH_ROWS = 10_000
# An official python batch is 31.0 MB; twice that leaves room for a re-pickled copy and nothing else.
MAX_PICKLE_BYTES = 2 * BATCH_ROWS * RECORD + (1 << 20)
FOLDERS = {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}
_FIX = "point data.root at the extracted official cifar-10-batches-py or cifar-10-batches-bin folder (or its parent)"


def _numpy_attr(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; importing the old name warns, so resolve whichever exists.
    for candidate in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1"); allow exactly that.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_attr("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_attr("numpy._core.multiarray", "scalar"),
    # Protocol 5 (a copy re-pickled with pickle.HIGHEST_PROTOCOL) rebuilds arrays from an in-band buffer.
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch contains: dicts, lists, bytes, ints and uint8 numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise _Refused(f"{module}.{name}")
        return factory()


class _Refused(pickle.UnpicklingError):
    def __init__(self, qualified: str) -> None:
        super().__init__(qualified)
        self.qualified = qualified


def read_pickle(path: Path) -> Any:
    """Load one python-format batch safely; anything outside the allow-list is refused before it runs, and a file
    larger than the format allows is refused before it is read."""
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise UserInputError("data.root", f"wrong format: {path} is {size:,} bytes, more than a CIFAR-10 python batch "
                             f"({BATCH_ROWS:,} images) can be", _FIX)
    try:
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle, encoding="bytes").load()
    except _Refused as exc:
        raise UserInputError(
            "data.root",
            f"{path} refuses to unpickle {exc.qualified}: this file is not a CIFAR-10 batch and could run code",
            "use the official cifar-10-batches-py files",
        ) from None
    except Exception as exc:  # a truncated or foreign file fails in many ways; all mean "not a batch"
        problem = f"wrong format: {path} is not a CIFAR-10 python batch ({exc})"
        raise UserInputError("data.root", problem, _FIX) from None


def _get(batch: dict[Any, Any], key: str) -> Any:
    # The official files were written by Python 2, so their keys load as bytes; a re-pickled copy may use str.
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    return None


def _check_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise UserInputError(
            "data.root",
            f"{path} holds label {int(labels[bad[0]])} at record {int(bad[0])}; CIFAR-10 labels are 0..9",
            "use the official CIFAR-10 files (CIFAR-100 is not supported)",
        )
    return labels.astype(np.int64)


def _python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_pickle(path)
    data = _get(batch, "data") if isinstance(batch, dict) else None
    labels = _get(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserInputError("data.root", f"wrong format: {path} lacks the 'data' array or the 'labels' list", _FIX)
    # Checked on the unpickled objects before anything is copied: a pickle can build an ndarray with zero strides
    # over one byte whose shape claims gigabytes, and any reshape, astype or concatenate would materialise them.
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD - 1 or not 1 <= data.shape[0] <= BATCH_ROWS:
        raise UserInputError("data.root", f"wrong format: {path} data is {data.dtype} {data.shape}, expected uint8 "
                             f"(N, 3072) with N <= {BATCH_ROWS:,}", _FIX)
    if not data.flags.c_contiguous or data.strides != (RECORD - 1, 1):
        raise UserInputError("data.root", f"wrong format: {path} data has strides {data.strides}, not a plain array", _FIX)
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data) or np.ndim(labels) != 1:
        count = len(labels) if isinstance(labels, (list, np.ndarray)) else type(labels).__name__
        raise UserInputError("data.root", f"wrong format: {path} has {len(data)} images but labels {count}", _FIX)
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserInputError("data.root", f"wrong format: {path} labels are not integers", _FIX) from None
    return data.reshape(-1, 3, 32, 32), _check_labels(path, label_array)


def _binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size  # checked before reading: the file is read whole
    if size == 0 or size % RECORD or size > BATCH_ROWS * RECORD:
        raise UserInputError(
            "data.root",
            f"wrong format: {path} is {size:,} bytes, not a whole number of {RECORD}-byte CIFAR-10 records "
            f"(at most {BATCH_ROWS:,})",
            _FIX,
        )
    raw = np.fromfile(path, dtype=np.uint8, count=size)
    if raw.size != size:
        raise UserInputError("data.root", f"wrong format: {path} changed while it was read", _FIX)
    records = raw.reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), _check_labels(path, records[:, 0])


def _python_classes(folder: Path) -> tuple[str, ...]:
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        return DEFAULT_CLASSES
    meta = read_pickle(meta_path)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise UserInputError("data.root", f"wrong format: {meta_path} does not list 10 label_names", _FIX)
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _binary_classes(folder: Path) -> tuple[str, ...]:
    meta_path = folder / "batches.meta.txt"
    if not meta_path.is_file():
        return DEFAULT_CLASSES
    names = [line.strip() for line in meta_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [name for name in names if name]
    if len(names) != 10:
        raise UserInputError("data.root", f"wrong format: {meta_path} lists {len(names)} class names, not 10", _FIX)
    return tuple(names)


def _expected(fmt: str) -> list[str]:
    suffix = ".bin" if fmt == "binary" else ""
    return [name + suffix for name in (*TRAIN_BATCHES, TEST_BATCH)]


def locate(root: Path) -> tuple[Path, str]:
    """Find the batch folder (root itself or a known child) and its format; prefer the python format."""
    if not root.is_dir():
        raise UserInputError("data.root", f"folder {root} does not exist", _FIX)
    candidates = [(root, fmt) for fmt in FOLDERS] + [(root / sub, fmt) for fmt, sub in FOLDERS.items()]
    for folder, fmt in candidates:
        if (folder / _expected(fmt)[0]).is_file():
            missing = [name for name in _expected(fmt) if not (folder / name).is_file()]
            if missing:
                raise UserInputError(
                    "data.root", f"CIFAR-10 folder {folder} lacks {', '.join(missing)}", "restore the official files"
                )
            return folder, fmt
    raise UserInputError("data.root", f"{root} holds no CIFAR-10 batches (data_batch_1 or data_batch_1.bin)", _FIX)


def load(spec: DataSpec) -> LoadedData:
    folder, fmt = locate(spec.resolved_root())
    read = _python_batch if fmt == "python" else _binary_batch
    names = _expected(fmt)
    parts = [read(folder / name) for name in names[:-1]]
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    test_x, test_y = read(folder / names[-1])
    if len(test_y) == 0:
        raise UserInputError("data.root", f"{folder / names[-1]} holds no images", _FIX)
    classes = _python_classes(folder) if fmt == "python" else _binary_classes(folder)
    logger.info("cifar10 (%s) from %s: %d train-pool and %d test images", fmt, folder, len(train_y), len(test_y))
    train, val = two_way(train_y, spec.val_fraction, spec.split_seed, "val")
    splits: dict[str, RawSplit] = {
        "train": raw_split(train_x, train_y, train),
        "val": raw_split(train_x, train_y, val),
        "test": raw_split(test_x, test_y, np.arange(len(test_y))),
    }
    return LoadedData(classes, 255.0, splits)

