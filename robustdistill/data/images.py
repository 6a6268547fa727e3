"""Turning user images (PIL images or arrays) into (C, H, W) arrays of one shape, for image folders and HF data."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
# ITU-R 601-2 luma, the weights PIL uses for convert("L"), so array and PIL inputs agree.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def open_image(source: str | os.PathLike[str] | bytes, where: str, field: str) -> Image.Image:
    """Decode one image file (a path or its bytes), refusing before decoding anything over MAX_IMAGE_PIXELS (its
    size is read from the header: ``Image.open`` decodes nothing), and turning every decoding failure - not an
    image, truncated, a decompression bomb - into one UserInputError naming ``field``."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserInputError(field, f"{where} is {width}x{height} = {width * height:,} pixels, over the limit "
                                     f"of {MAX_IMAGE_PIXELS:,} (4096x4096)", "downscale the image or remove it")
            image.load()
            return image.copy()
    except UserInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError: OSError
        raise UserInputError(field, f"cannot read image {where}: {exc}", "remove or replace the file") from None


def infer_channels(image: Image.Image | np.ndarray, where: str) -> int:
    """1 for greyscale images, else 3 (colour with alpha counts as colour)."""
    if isinstance(image, Image.Image):
        return 1 if image.mode in _GREY_MODES else 3
    return 1 if _array_to_hwc(np.asarray(image), where).shape[-1] == 1 else 3


def _pil_to_chw(image: Image.Image, channels: int, size: int | None) -> np.ndarray:
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _array_to_hwc(array: np.ndarray, where: str) -> np.ndarray:
    """Accept (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; return (H, W, C)."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        return array
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        return array.transpose(1, 2, 0)
    raise UserInputError(
        "data.image_column",
        f"{where} is an array of shape {tuple(array.shape)}, not an image",
        "store images as (H, W), (H, W, C) or (C, H, W) arrays with 1, 3 or 4 channels, or as PIL images",
    )


def _float_to_chw(hwc: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(hwc, dtype=np.float32)).permute(2, 0, 1)
    if tensor.shape[0] == 4:
        tensor = tensor[:3]  # drop alpha, as PIL's RGBA -> RGB does
    if channels == 1 and tensor.shape[0] == 3:
        tensor = (tensor * _LUMA).sum(0, keepdim=True)
    elif channels == 3 and tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if size is not None and tuple(tensor.shape[1:]) != (size, size):
        tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return tensor.clamp(0.0, 1.0).numpy()


def to_chw(image: Image.Image | np.ndarray, channels: int, size: int | None, where: str) -> np.ndarray:
    """One image as (C, H, W): uint8 for PIL images and integer arrays, float32 in [0, 1] for float arrays."""
    if isinstance(image, Image.Image):
        return _pil_to_chw(image, channels, size)
    array = np.asarray(image)
    hwc = _array_to_hwc(array, where)
    if np.issubdtype(hwc.dtype, np.integer) or hwc.dtype == np.bool_:
        if hwc.size and (hwc.min() < 0 or hwc.max() > 255):
            raise UserInputError(
                "data.image_column",
                f"{where} has pixel values outside 0..255",
                "store 8-bit pixels or floats in [0, 1]",
            )
        hwc = hwc.astype(np.uint8)
        squeezed = hwc[:, :, 0] if hwc.shape[-1] == 1 else hwc
        return _pil_to_chw(Image.fromarray(squeezed), channels, size)
    if np.issubdtype(hwc.dtype, np.floating):
        if hwc.size and (not np.isfinite(hwc).all() or hwc.min() < 0.0 or hwc.max() > 1.0):
            raise UserInputError(
                "data.image_column", f"{where} has float pixel values outside [0, 1]", "scale float images to [0, 1]"
            )
        return _float_to_chw(hwc, channels, size)
    raise UserInputError("data.image_column", f"{where} holds {hwc.dtype} values, not pixels", "store images")


def stack_images(images: Iterable[tuple[np.ndarray, str]]) -> tuple[torch.Tensor, float]:
    """Stack (C, H, W) arrays into one tensor, checking they share a shape; return (pixels, scale to [0, 1])."""
    arrays: list[np.ndarray] = []
    first_shape: tuple[int, ...] | None = None
    first_where = ""
    for array, where in images:
        if first_shape is None:
            first_shape, first_where = array.shape, where
        elif array.shape != first_shape:
            raise UserInputError(
                "data.image_size",
                f"wrong image shape: {where} is {_describe(array.shape)} but {first_where} is {_describe(first_shape)}",
                "set data.image_size to resize every image to one square size",
            )
        arrays.append(array)
    if not arrays:
        raise UserInputError("data.root", "no images found", "add images")
    if all(a.dtype == np.uint8 for a in arrays):
        return torch.from_numpy(np.stack(arrays)), 255.0
    # Mixed storage: keep full precision of the float images rather than quantising them.
    floats = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays]
    return torch.from_numpy(np.stack(floats).astype(np.float32)), 1.0


def _describe(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{width}x{height} with {channels} channel(s)"
