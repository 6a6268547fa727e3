"""ImageSplit (what trainers and probes consume) and load_split, with an in-process cache of loaded data."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from robustdistill.data import cifar10, digits, hf_disk, imagefolder
from robustdistill.data.pool import SPLITS, LoadedData
from robustdistill.data.spec import DataSpec, parse_spec
from robustdistill.errors import UserInputError
from robustdistill.utils import sha256_tensors

logger = logging.getLogger(__name__)

_LOADERS: dict[str, Callable[[DataSpec], LoadedData]] = {
    "digits": digits.load,
    "cifar10": cifar10.load,
    "imagefolder": imagefolder.load,
    "hf-disk": hf_disk.load,
}


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split of an image dataset: pixels in [0, 1], labels, and stable positions in the source pool.

    ``indices`` are the ground truth of membership audits: for a given spec, example ``indices[i]`` is always
    in the same split. Treat the tensors as read-only; they may be shared with other holders of the split.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    classes: tuple[str, ...]
    split: str
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.x.shape[1:]
        return int(channels), int(height), int(width)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSplit(split={self.split!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, fingerprint={self.fingerprint[:12]}...)"
        )

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches of (x, y); with ``shuffle`` the order is a pure function of ``seed``."""
        if batch_size < 1:
            raise UserInputError("batch_size", f"{batch_size} is not a batch size", "use a positive integer")
        generator = torch.Generator()
        generator.manual_seed(seed)
        return DataLoader(
            TensorDataset(self.x, self.y), batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0
        )

    def subset(self, n: int | None, seed: int = 0) -> ImageSplit:
        """``n`` examples chosen by a seeded permutation, balanced across classes; None (or n >= len) -> self.

        Examples are ranked by their position within their own class in the permutation, relative to the class
        size, so any prefix holds the classes in about their original proportions. The subset keeps the
        split's order.
        """
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise UserInputError("n", f"a subset of {n} examples is empty", "use a positive number of examples")
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        labels = self.y[order]
        rank = torch.empty(len(self), dtype=torch.float64)
        for label in labels.unique():
            members = (labels == label).nonzero().flatten()
            rank[members] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
        chosen = order[torch.sort(rank, stable=True).indices[:n]].sort().values
        x, y, indices = self.x[chosen], self.y[chosen], self.indices[chosen]
        digest = hashlib.sha256(f"{self.fingerprint}\nsubset\n{sha256_tensors(x, y, indices)}".encode()).hexdigest()
        return ImageSplit(x, y, indices, self.classes, self.split, digest)


@functools.lru_cache(maxsize=8)
def _load_cached(cache_key: str) -> LoadedData:
    spec = DataSpec.model_validate_json(cache_key)
    logger.info("loading %s data", spec.kind)
    return _LOADERS[spec.kind](spec)


def clear_cache() -> None:
    """Forget loaded data (e.g. after the files under a root changed)."""
    _load_cached.cache_clear()


def load_split(spec: DataSpec | Mapping[str, Any] | None, split: str) -> ImageSplit:
    """Load one split ("train", "val" or "test") of the data a spec describes."""
    if split not in SPLITS:
        raise UserInputError("split", f"{split!r} is not a split", f"use one of {', '.join(SPLITS)}")
    spec = parse_spec(spec)
    data = _load_cached(spec.cache_key())
    raw = data.splits[split]
    x = raw.x.to(torch.float32).div_(data.scale) if raw.x.dtype == torch.uint8 else raw.x.to(torch.float32).clone()
    y, indices = raw.y.clone(), raw.indices.clone()
    digest = hashlib.sha256(f"{spec.identity()}\n{split}\n{sha256_tensors(x, y, indices)}".encode()).hexdigest()
    return ImageSplit(x, y, indices, data.classes, split, digest)


def load_splits(spec: DataSpec | Mapping[str, Any] | None) -> dict[str, ImageSplit]:
    """All three splits, keyed "train", "val", "test"."""
    spec = parse_spec(spec)
    return {name: load_split(spec, name) for name in SPLITS}
