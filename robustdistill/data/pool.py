"""Loaded data before it becomes ImageSplits: raw pixels per split, and the seeded stratified split helpers."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from robustdistill.errors import UserInputError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class RawSplit:
    """One split as stored in the in-process cache: pixels kept in their source dtype (uint8 for image files,
    so a cached CIFAR-10 costs 180 MB rather than 720 MB), labels, and positions in the source pool."""

    x: torch.Tensor  # (N, C, H, W), uint8 or float32
    y: torch.Tensor  # int64
    indices: torch.Tensor  # int64


@dataclass(frozen=True)
class LoadedData:
    classes: tuple[str, ...]
    scale: float  # divide the raw pixels by this to get [0, 1]
    splits: dict[str, RawSplit]


def n_for(fraction: float, total: int) -> int:
    """Round half up, so that e.g. 0.2 of 1797 is 359 and the same on every platform."""
    return int(math.floor(fraction * total + 0.5))


def carve(positions: np.ndarray, labels: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``positions`` into (kept, carved) with ``n_out`` carved, stratified by ``labels`` when possible.

    Stratification needs at least two examples of every class and room for one of each on both sides; tiny
    datasets fall back to a plain seeded split rather than refusing to load.
    """
    if n_out <= 0:
        return positions, positions[:0]
    if n_out >= len(positions):
        return positions[:0], positions
    try:
        kept, out = train_test_split(positions, test_size=n_out, stratify=labels, random_state=seed)
    except ValueError as exc:
        logger.warning("%d examples cannot be split stratified (%s); using a plain seeded split", len(positions), exc)
        kept, out = train_test_split(positions, test_size=n_out, random_state=seed)
    return np.sort(kept), np.sort(out)


def check_not_empty(split: str, count: int) -> None:
    if count > 0:
        return
    if split == "train":
        raise UserInputError(
            "data.val_fraction", "the train split is empty", "lower data.val_fraction / data.test_fraction or add data"
        )
    raise UserInputError(f"data.{split}_fraction", f"the {split} split is empty", f"raise {split}_fraction or add data")


def three_way(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Positions of train/val/test in one pool: test_fraction of all to test, then val_fraction of ALL to val."""
    total = len(labels)
    positions = np.arange(total)
    n_test = n_for(test_fraction, total)
    n_val = n_for(val_fraction, total)
    check_not_empty("test", n_test)
    check_not_empty("val", n_val)
    check_not_empty("train", total - n_test - n_val)
    rest, test = carve(positions, labels, n_test, seed)
    train, val = carve(rest, labels[rest], n_val, seed)
    return {"train": train, "val": val, "test": test}


def two_way(labels: np.ndarray, fraction: float, seed: int, carved: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of (train, carved) where ``carved`` ("val" or "test") takes ``fraction`` of the pool."""
    total = len(labels)
    n_out = n_for(fraction, total)
    check_not_empty(carved, n_out)
    check_not_empty("train", total - n_out)
    return carve(np.arange(total), labels, n_out, seed)


def raw_split(x: np.ndarray | torch.Tensor, y: np.ndarray, positions: np.ndarray) -> RawSplit:
    """Select ``positions`` of a pool (``x`` indexed along its first axis) into a RawSplit."""
    index = torch.as_tensor(np.asarray(positions, dtype=np.int64))
    pixels = torch.as_tensor(x)[index].contiguous()
    return RawSplit(x=pixels, y=torch.as_tensor(np.asarray(y, dtype=np.int64))[index].contiguous(), indices=index)


def split_pool(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray,
    classes: tuple[str, ...],
    scale: float,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> LoadedData:
    """One pool carved three ways (digits, image folders, single-split HF datasets)."""
    labels = np.asarray(y, dtype=np.int64)
    positions = three_way(labels, val_fraction, test_fraction, seed)
    return LoadedData(classes, scale, {name: raw_split(x, labels, positions[name]) for name in SPLITS})
