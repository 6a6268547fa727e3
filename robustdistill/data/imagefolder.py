"""A folder of images, one sub-folder per class (root/<class>/*.png|*.jpg|*.jpeg), classes sorted by name."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from robustdistill.data.images import infer_channels, open_image, stack_images, to_chw
from robustdistill.data.pool import LoadedData, split_pool
from robustdistill.data.spec import DataSpec
from robustdistill.errors import UserInputError
from robustdistill.limits import check_dataset_size

logger = logging.getLogger(__name__)

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
_LAYOUT = "lay the folder out as data.root/<class name>/<image>.png|jpg|jpeg"


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def scan(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """Class names and (image path, label) pairs, in a fixed order so the split is reproducible."""
    if not root.is_dir():
        raise UserInputError("data.root", f"folder {root} does not exist", "point data.root at the image folder")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        raise UserInputError("data.root", f"{root} has no class sub-folders", _LAYOUT)
    if len(class_dirs) == 1:
        raise UserInputError(
            "data.root",
            f"{root} has a single class folder {class_dirs[0].name!r}; a classifier needs at least two",
            "point data.root at the folder that holds one sub-folder per class",
        )
    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        # Nested folders inside a class are walked too (as torchvision's ImageFolder does).
        images = sorted(
            p for p in class_dir.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file() and _visible(p, class_dir)
        )
        if not images:
            raise UserInputError("data.root", f"class folder {class_dir} has no .png/.jpg/.jpeg images", _LAYOUT)
        files.extend((path, label) for path in images)
    return tuple(p.name for p in class_dirs), files


def _open(path: Path) -> Image.Image:
    return open_image(path, str(path), "data.root")


def load(spec: DataSpec) -> LoadedData:
    root = spec.resolved_root()
    classes, files = scan(root)
    first = _open(files[0][0])
    channels = spec.channels or infer_channels(first, str(files[0][0]))
    # Every image ends up this shape (or the load stops at the first that differs): size the whole load from it.
    shape = (channels, spec.image_size or first.height, spec.image_size or first.width)
    check_dataset_size("data.root", len(files), shape, 1, "use fewer or smaller images, or set data.image_size")
    logger.info("imagefolder %s: %d images in %d classes, %d channel(s)", root, len(files), len(classes), channels)

    def decoded() -> Iterator[tuple[np.ndarray, str]]:
        progress = tqdm(files, desc="reading images", unit="img", disable=len(files) < 2000, leave=False)
        for path, _ in progress:
            yield to_chw(_open(path), channels, spec.image_size, str(path)), str(path.relative_to(root))

    pixels, scale = stack_images(decoded())
    labels = np.array([label for _, label in files], dtype=np.int64)
    return split_pool(pixels, labels, classes, scale, spec.val_fraction, spec.test_fraction, spec.split_seed)
