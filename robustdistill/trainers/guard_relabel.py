"""GUARD / SRe2L stage 3, relabel, and the distilled dataset the pipeline writes.

Here live :func:`relabel` (the squeezed model's soft labels at temperature T), :func:`distilled_fingerprint` (the
distilled dataset's identity), the writers of ``<out>.distilled/`` - :func:`save_distilled_dataset` (a Hugging Face
DatasetDict: synthetic "train" plus the real "validation" / "test"), :func:`save_grid` (grid.png, one row per class) -
and :func:`distilled_paths`, where each piece goes (including distilled.json, :data:`MANIFEST`), with the ownership
checks that let a rerun replace only what robustdistill wrote there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustdistill import ownership
from robustdistill.data import ImageSplit, clear_cache
from robustdistill.models import Classifier
from robustdistill.utils import atomic_path, sha256_tensors

MANIFEST = "distilled.json"
DISTILLED = "distilled"  # the marker kind of <out>.distilled/


@torch.no_grad()
def relabel(model: Classifier, images: torch.Tensor, temperature: float = 20.0, batch_size: int = 512) -> torch.Tensor:
    """Soft labels: softmax(model(x) / T) of the squeezed model in eval mode (SRe2L's relabel, T = 20)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        parts = [torch.softmax(model(images[i : i + batch_size].to(device)) / temperature, dim=1).cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def distilled_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the synthetic images (float32) and their labels: the distilled dataset's identity."""
    return sha256_tensors(images.to(torch.float32), labels.to(torch.int64))


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) [0, 1] floats -> (N, H, W, C) uint8 when they are exact 8-bit levels (real CIFAR-10), else float32."""
    array = x.permute(0, 2, 3, 1).contiguous().numpy()
    scaled = array * 255.0
    if np.allclose(scaled, np.round(scaled), atol=1e-4, rtol=0):
        return np.round(scaled).astype(np.uint8)
    return array.astype(np.float32)


def _is_distilled_dataset(path: Path) -> bool:
    """An existing folder the dataset may replace: empty, or one whose every file the marker of ``<out>.distilled``
    lists (robustdistill wrote them all; a user's file among them keeps the folder)."""
    if path.is_dir() and not any(path.iterdir()):
        return True
    files = ownership.files_under(path) if path.is_dir() else []
    return bool(files) and all(ownership.owns(path.parent, path / name) for name in files)


def _is_legacy_distilled(root: Path) -> bool:
    """A ``<out>.distilled`` folder of an earlier version (no marker): only what a GUARD / SRe2L run writes there."""
    known = {"distilled.json", "grid.png", "dataset", "squeezed", "squeezed.partial"}
    entries = list(root.iterdir())
    return (all(e.name in known or ownership.is_tmp_leftover(e.name) for e in entries)
            and (root / "dataset" / "dataset_dict.json").is_file())


def save_distilled_dataset(out: str | Path, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor,
                           classes: tuple[str, ...], val: ImageSplit | None = None,
                           test: ImageSplit | None = None) -> Path:
    """Write the distilled dataset with ``save_to_disk``, atomically: "train" = the synthetic images (image,
    label, soft_label), plus the real "validation" and "test" splits when given. Reads back with
    ``load_split({"kind": "hf-disk", "root": out}, "train")``."""
    from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
    from datasets import utils as datasets_utils

    from robustdistill.models.checkpoint import atomic_directory

    out = Path(out)
    _, channels, height, width = images.shape

    def split(x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> Dataset:
        array = _hwc(x) if soft is None else x.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)
        columns: dict[str, Any] = {"image": array, "label": y.numpy().astype(np.int64)}
        features = {"image": Array3D(shape=(height, width, channels), dtype=str(array.dtype)),
                    "label": ClassLabel(names=list(classes))}
        if soft is not None:
            columns["soft_label"] = soft.numpy().astype(np.float32)
            features["soft_label"] = Sequence(Value("float32"), length=len(classes))
        return Dataset.from_dict(columns, features=Features(features))

    parts = {"train": split(images, labels, soft_labels)}
    if val is not None:
        parts["validation"] = split(val.x, val.y, None)
    if test is not None:
        parts["test"] = split(test.x, test.y, None)
    quiet = datasets_utils.are_progress_bars_disabled()
    datasets_utils.disable_progress_bars()  # a bar per split for a few hundred rows is noise
    try:
        with atomic_directory(out, may_replace=_is_distilled_dataset) as tmp:
            DatasetDict(parts).save_to_disk(str(tmp))
    finally:
        if not quiet:
            datasets_utils.enable_progress_bars()
    clear_cache()  # a dataset rewritten at the same path must not be served from the in-process cache
    return out


def save_grid(images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], out: str | Path,
              max_columns: int = 50) -> Path:
    """A PNG of the synthetic images: one row per class (its name on the left), up to ``max_columns`` per row."""
    from PIL import Image, ImageDraw

    out = Path(out)
    _, channels, height, width = images.shape
    scale = max(1, 32 // max(height, width))
    cell_h, cell_w, pad, margin = height * scale, width * scale, 2, 28
    columns = min(max_columns, max(int((labels == c).sum()) for c in range(len(classes))))
    canvas = Image.new("RGB", (margin + columns * (cell_w + pad) + pad, len(classes) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(classes):
        top = pad + row * (cell_h + pad)
        draw.text((2, top + cell_h // 2 - 5), str(name)[:4], fill="black")
        members = images[labels == row][:columns]
        for col, image in enumerate(members):
            pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).convert("RGB")
            tile = tile.resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + pad + col * (cell_w + pad), top))
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def distilled_paths(out: str | Path) -> dict[str, Path]:
    """Where a run with student checkpoint ``out`` writes the distilled data and the squeezed model."""
    root = Path(out).with_name(Path(out).name + ".distilled")
    return {"root": root, "squeezed": root / "squeezed", "dataset": root / "dataset", "grid": root / "grid.png",
            "manifest": root / MANIFEST}
