"""Image folders written with PIL (PNG and JPEG), and their error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustdistill.data import load_split, load_splits
from robustdistill.errors import UserInputError

CLASSES = ("cat", "dog", "eel")
PER_CLASS = 10


def write_folder(
    root: Path, size: tuple[int, int] = (12, 12), mode: str = "RGB", seed: int = 0
) -> dict[str, np.ndarray]:
    """Per class: 7 PNG + 3 JPEG images. Returns the PNG pixels by relative path."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            ext = "png" if i < 7 else "jpg"
            Image.fromarray(pixels, mode=mode).save(root / name / f"{i:02d}.{ext}")
            if ext == "png":
                written[f"{name}/{i:02d}.png"] = pixels
    (root / name / "notes.txt").write_text("not an image, ignored")
    return written


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("images")
    return root, write_folder(root)


def test_loads_png_and_jpeg(folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, written = folder
    splits = load_splits({"kind": "imagefolder", "root": str(root), "val_fraction": 0.2, "test_fraction": 0.2})
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 6, "test": 6}
    all_indices = set()
    for split in splits.values():
        assert split.classes == CLASSES and split.input_shape == (3, 12, 12)
        assert split.x.dtype == torch.float32 and 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
        assert set(split.y.tolist()) == {0, 1, 2}  # stratified
        all_indices |= set(split.indices.tolist())
    assert all_indices == set(range(len(CLASSES) * PER_CLASS))
    # Files are ordered class by class, name by name: index 3 is cat/03.png.
    for split in splits.values():
        for k, index in enumerate(split.indices.tolist()):
            if index == 3:
                expected = torch.from_numpy(written["cat/03.png"].transpose(2, 0, 1).astype(np.float32) / 255.0)
                assert torch.equal(split.x[k], expected) and int(split.y[k]) == 0


def test_resize_and_channels(tmp_path: Path) -> None:
    write_folder(tmp_path, size=(20, 14))
    grey = load_split({"kind": "imagefolder", "root": str(tmp_path), "image_size": 8, "channels": 1}, "train")
    assert grey.input_shape == (1, 8, 8)


def test_greyscale_inferred(tmp_path: Path) -> None:
    write_folder(tmp_path, mode="L")
    assert load_split({"kind": "imagefolder", "root": str(tmp_path)}, "test").input_shape == (1, 12, 12)


def test_differing_shapes_need_image_size(tmp_path: Path) -> None:
    write_folder(tmp_path)
    Image.new("RGB", (16, 12)).save(tmp_path / "dog" / "big.png")
    with pytest.raises(UserInputError, match=r"^data\.image_size: wrong image shape: dog/big\.png is 16x12"):
        load_split({"kind": "imagefolder", "root": str(tmp_path)}, "train")
    fixed = load_split({"kind": "imagefolder", "root": str(tmp_path), "image_size": 12}, "train")
    assert fixed.input_shape == (3, 12, 12)


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (lambda root: None, r"data\.root: folder .* does not exist"),
        (lambda root: root.mkdir(), r"data\.root: .* has no class sub-folders"),
        (lambda root: (root / "only").mkdir(parents=True), r"data\.root: .* single class folder 'only'"),
    ],
)
def test_folder_errors(tmp_path: Path, damage: object, pattern: str) -> None:
    root = tmp_path / "root"
    damage(root)  # type: ignore[operator]
    with pytest.raises(UserInputError, match=pattern):
        load_split({"kind": "imagefolder", "root": str(root)}, "train")


def test_class_without_images(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "fox").mkdir()
    (tmp_path / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(UserInputError, match=r"data\.root: class folder .*fox has no"):
        load_split({"kind": "imagefolder", "root": str(tmp_path)}, "train")


def test_unreadable_image(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "eel" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(UserInputError, match=r"data\.root: cannot read image .*broken\.png"):
        load_split({"kind": "imagefolder", "root": str(tmp_path)}, "train")


def test_too_few_images_for_a_split(tmp_path: Path) -> None:
    write_folder(tmp_path)
    with pytest.raises(UserInputError, match=r"data\.test_fraction: the test split is empty"):
        load_split({"kind": "imagefolder", "root": str(tmp_path), "test_fraction": 0.01}, "train")


def test_folder_is_read_once_per_process(tmp_path: Path) -> None:
    import shutil

    from robustdistill.data import clear_cache

    root = tmp_path / "once"
    write_folder(root, seed=5)
    spec = {"kind": "imagefolder", "root": str(root), "split_seed": 77}
    train = load_split(spec, "train")
    shutil.rmtree(root)  # later splits come from the in-process cache, not the (now gone) folder
    assert len(load_split(spec, "val")) == 6 and torch.equal(load_split(spec, "train").x, train.x)
    clear_cache()
    with pytest.raises(UserInputError, match=r"data\.root: folder .* does not exist"):
        load_split(spec, "test")
