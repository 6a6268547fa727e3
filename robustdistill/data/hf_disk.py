"""A Hugging Face dataset saved with ``save_to_disk`` (a Dataset or a DatasetDict); read locally, never downloaded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustdistill.data.images import infer_channels, open_image, stack_images, to_chw
from robustdistill.data.pool import SPLITS, LoadedData, RawSplit, raw_split, three_way, two_way
from robustdistill.data.spec import DataSpec
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_IMAGE_PIXELS, MAX_INPUT_VALUES, check_dataset_size

logger = logging.getLogger(__name__)

VAL_NAMES: tuple[str, ...] = ("validation", "val", "valid")
_BATCH = 256


def _open(spec: DataSpec) -> dict[str, Any]:
    """The saved dataset as {source split name: Dataset}; a lone Dataset is called "train"."""
    from datasets import Dataset, DatasetDict, load_from_disk

    root = spec.resolved_root()
    if not root.is_dir():
        raise UserInputError("data.root", f"folder {root} does not exist", "point data.root at a save_to_disk folder")
    try:
        saved = load_from_disk(str(root))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError or JSON errors for foreign folders
        raise UserInputError(
            "data.root",
            f"{root} is not a Hugging Face dataset saved with save_to_disk ({exc})",
            "create it with Dataset.save_to_disk / DatasetDict.save_to_disk, or use kind imagefolder",
        ) from None
    if isinstance(saved, Dataset):
        return {"train": saved}
    if isinstance(saved, DatasetDict):
        if "train" not in saved:
            raise UserInputError(
                "data.root",
                f"the saved DatasetDict has no 'train' split (it has {', '.join(saved)})",
                "add a train split",
            )
        return dict(saved)
    raise UserInputError("data.root", f"{root} holds a {type(saved).__name__}, not a Dataset", "save a Dataset")


def _check_columns(spec: DataSpec, name: str, dataset: Any) -> None:
    for field in ("image_column", "label_column"):
        column = getattr(spec, field)
        if column not in dataset.column_names:
            raise UserInputError(
                f"data.{field}",
                f"column {column!r} is not in split {name!r}; available columns: {', '.join(dataset.column_names)}",
                f"set data.{field} to one of them",
            )


def _classes(spec: DataSpec, sources: dict[str, Any]) -> tuple[tuple[str, ...], dict[Any, int] | None]:
    """Class names, and a value -> label map when labels are strings (None when labels are already ints)."""
    from datasets import ClassLabel

    features = [dataset.features[spec.label_column] for dataset in sources.values()]
    if all(isinstance(feature, ClassLabel) for feature in features):
        names = {tuple(feature.names) for feature in features}
        if len(names) > 1:
            raise UserInputError("data.label_column", "the splits' ClassLabel names differ", "use one ClassLabel")
        return next(iter(names)), None
    values = [v for dataset in sources.values() for v in dataset[spec.label_column]]
    if values and all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        return tuple(names), {name: i for i, name in enumerate(names)}
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise UserInputError("data.label_column", "labels must be integers, strings or a ClassLabel", "fix the column")
    top = max((int(v) for v in values), default=0)
    return tuple(str(i) for i in range(top + 1)), None


def _labels(
    spec: DataSpec, name: str, dataset: Any, classes: tuple[str, ...], mapping: dict[Any, int] | None
) -> np.ndarray:
    values = dataset[spec.label_column]
    labels = np.array([mapping[v] for v in values] if mapping else values, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if bad.size:
        raise UserInputError(
            "data.label_column",
            f"split {name!r} row {int(bad[0])} has label {int(labels[bad[0]])}, outside 0..{len(classes) - 1}",
            "labels must index the class names (no -1 'missing' labels)",
        )
    return labels


def _raw_column(spec: DataSpec, dataset: Any) -> Any:
    """The image column without the datasets library's own decoding: an Image feature comes back as its stored
    {"bytes", "path"} cells, which :func:`_decode` checks (size from the header, failures as UserInputError)
    before PIL decodes them; datasets would decode anything, a decompression bomb included, with a traceback."""
    from datasets import Image

    column = dataset.with_format(None).select_columns([spec.image_column])
    if isinstance(column.features[spec.image_column], Image):
        column = column.cast_column(spec.image_column, Image(decode=False))
    return column


def _decode(cell: Any, where: str) -> Any:
    """A stored cell as a PIL image or an array, never larger than the limits allow."""
    if cell is None:
        raise UserInputError("data.image_column", f"{where} has no image", "drop rows without images")
    if isinstance(cell, dict) and ("bytes" in cell or "path" in cell):
        if isinstance(cell.get("bytes"), bytes):
            return open_image(cell["bytes"], where, "data.image_column")
        path = cell.get("path")
        if not isinstance(path, str) or not Path(path).is_file():
            raise UserInputError("data.image_column", f"{where} holds neither image bytes nor a path to an image file "
                                 f"(path {path!r})", "save the dataset with its images embedded")
        return open_image(path, f"{where} ({path})", "data.image_column")
    if isinstance(cell, (list, np.ndarray)) and np.size(cell) > MAX_INPUT_VALUES:
        raise UserInputError("data.image_column", f"{where} holds {np.size(cell):,} values, more than an image of "
                             f"{MAX_IMAGE_PIXELS:,} pixels", "store smaller images")
    return cell


def _images(spec: DataSpec, name: str, dataset: Any, channels: int) -> Iterator[tuple[np.ndarray, str]]:
    column = _raw_column(spec, dataset)
    for start in range(0, len(column), _BATCH):
        batch = column[start : start + _BATCH][spec.image_column]
        for offset, cell in enumerate(batch):
            where = f"split {name!r} row {start + offset}"
            yield to_chw(_decode(cell, where), channels, spec.image_size, where), where


def load(spec: DataSpec) -> LoadedData:
    sources = _open(spec)
    for name, dataset in sources.items():
        _check_columns(spec, name, dataset)
        if len(dataset) == 0:
            raise UserInputError("data.root", f"the saved {name!r} split is empty", "add data to it or drop the split")
    classes, mapping = _classes(spec, sources)
    first = _decode(_raw_column(spec, sources["train"])[0][spec.image_column], "split 'train' row 0")
    channels = spec.channels or infer_channels(first, "split 'train' row 0")

    val_name = next((n for n in VAL_NAMES if n in sources), None)
    # Row counts come from the saved metadata: size the decoded splits from the first image before reading them.
    shape = to_chw(first, channels, spec.image_size, "split 'train' row 0")
    rows = sum(len(sources[n]) for n in ("train", val_name, "test") if n is not None and n in sources)
    check_dataset_size("data.root", rows, shape.shape, shape.dtype.itemsize, "use fewer or smaller images, or set data.image_size")
    pools: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
    scales: list[float] = []
    for name in ["train", val_name, "test" if "test" in sources else None]:
        if name is None:
            continue
        pixels, scale = stack_images(_images(spec, name, sources[name], channels))
        pools[name] = (pixels, _labels(spec, name, sources[name], classes, mapping))
        scales.append(scale)
    if len(set(scales)) > 1:
        # One split stored floats, another 8-bit images: bring everything to float [0, 1].
        pools = {k: (x.float() / 255.0 if x.dtype == torch.uint8 else x, y) for k, (x, y) in pools.items()}
    scale = scales[0] if len(set(scales)) == 1 else 1.0
    shapes = {tuple(x.shape[1:]) for x, _ in pools.values()}
    if len(shapes) > 1:
        raise UserInputError(
            "data.image_size",
            f"wrong image shape: the splits' images differ in shape {sorted(shapes)}",
            "set data.image_size to resize every image to one square size",
        )
    sizes = {name: len(y) for name, (_, y) in pools.items()}
    logger.info("hf-disk %s: splits %s, %d classes", spec.root, sizes, len(classes))
    return LoadedData(classes, scale, _split(spec, pools))


def _split(spec: DataSpec, pools: dict[str, tuple[torch.Tensor, np.ndarray]]) -> dict[str, RawSplit]:
    """Use the official splits that exist; carve the missing ones from train (indices are row numbers within
    the saved split each example came from, as for CIFAR-10's test batch)."""
    train_x, train_y = pools["train"]
    official = {"val": next((n for n in VAL_NAMES if n in pools), None), "test": "test" if "test" in pools else None}

    def whole(name: str) -> RawSplit:
        return raw_split(pools[name][0], pools[name][1], np.arange(len(pools[name][1])))

    def carved(positions: np.ndarray) -> RawSplit:
        return raw_split(train_x, train_y, positions)

    if official["val"] and official["test"]:
        return {"train": whole("train"), "val": whole(official["val"]), "test": whole(official["test"])}
    if not official["val"] and not official["test"]:
        positions = three_way(train_y, spec.val_fraction, spec.test_fraction, spec.split_seed)
        return {name: carved(positions[name]) for name in SPLITS}
    missing, present = ("val", "test") if official["test"] else ("test", "val")
    fraction = spec.val_fraction if missing == "val" else spec.test_fraction
    present_name = official[present]
    assert present_name is not None
    train, out = two_way(train_y, fraction, spec.split_seed, missing)
    return {"train": carved(train), missing: carved(out), present: whole(present_name)}
