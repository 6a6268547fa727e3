"""Classifier adapters: every image model robustdistill handles takes pixels in [0, 1].

Normalisation is declared with the model and applied inside ``forward``, so attacks, eps-balls and clipping all
live in [0, 1] pixel space and nobody has to remember which mean/std a checkpoint was trained with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustdistill.errors import UserInputError
from robustdistill.models.architectures import build_network

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "robustdistill.classifier"
CHECKPOINT_FORMAT_VERSION = 1


def _channel_stats(name: str, values: Sequence[float] | float | None, channels: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        values = [float(values)]
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UserInputError(name, f"must be a list of numbers, got {values!r}",
                             f"one value per channel ({channels})") from None
    if len(stats) == 1:
        stats = stats * channels
    if len(stats) != channels:
        raise UserInputError(name, f"has {len(stats)} values but the input has {channels} channels",
                             f"give {channels} values (or one for all channels)")
    if name.endswith("std") and any(v <= 0 for v in stats):
        raise UserInputError(name, f"values must be positive, got {list(stats)}", "e.g. std=[0.2471, 0.2435, 0.2616]")
    return stats


def _input_shape(value: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UserInputError("input_shape", f"must be (channels, height, width), got {value!r}",
                             "e.g. [3, 32, 32]") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserInputError("input_shape", f"must be (channels, height, width), got {list(shape)}", "e.g. [3, 32, 32]")
    return shape  # type: ignore[return-value]


class _Normalize(nn.Module):
    """``(x - mean) / std`` with per-channel buffers; identity when no statistics are declared."""

    def __init__(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> None:
        super().__init__()
        self.enabled = mean is not None or std is not None
        channels = len(mean or std or ())
        mean_t = torch.tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        # Non-persistent: the statistics live in config.json, so the weights file holds only the network.
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """A registered network plus its input contract: takes x in [0, 1] of shape (N, C, H, W), returns logits."""

    def __init__(
        self,
        network: nn.Module,
        *,
        arch: str,
        num_classes: int,
        input_shape: Sequence[int],
        arch_params: dict[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.arch = arch
        self.arch_params: dict[str, Any] = dict(arch_params or {})
        self.num_classes = int(num_classes)
        self.input_shape = _input_shape(input_shape)
        channels = self.input_shape[0]
        self.mean = _channel_stats("normalization.mean", mean, channels)
        self.std = _channel_stats("normalization.std", std, channels)
        if (self.mean is None) != (self.std is None):
            raise UserInputError("normalization", "mean and std must be given together", "pass both or neither")
        if classes is not None and len(classes) != self.num_classes:
            raise UserInputError("classes", f"has {len(classes)} names for {self.num_classes} classes",
                                 "give one name per class, or leave it out")
        self.classes: list[str] | None = [str(c) for c in classes] if classes is not None else None
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.normalize = _Normalize(self.mean, self.std)

    @classmethod
    def from_arch(
        cls,
        arch: str,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        classes: Sequence[str] | None = None,
        provenance: dict[str, Any] | None = None,
        **arch_params: Any,
    ) -> Classifier:
        """Build a freshly initialised classifier of a registered architecture (seed torch first for determinism)."""
        shape = _input_shape(input_shape)
        network = build_network(arch, num_classes, shape[0], min(shape[1], shape[2]), **arch_params)
        return cls(network, arch=arch, num_classes=num_classes, input_shape=shape, arch_params=arch_params,
                   classes=classes, mean=mean, std=std, provenance=provenance)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Classifier:
        """Build an (untrained) classifier from a checkpoint's config.json contents."""
        for key in ("arch", "num_classes", "input_shape"):
            if key not in config:
                raise UserInputError(f"config.json: {key}", "is missing", "re-save the checkpoint with save_checkpoint")
        normalization = config.get("normalization") or {}
        if not isinstance(normalization, dict):
            raise UserInputError("config.json: normalization", "must be an object with mean and std, or null",
                                 'e.g. {"mean": [0.5], "std": [0.5]}')
        return cls.from_arch(
            config["arch"],
            num_classes=config["num_classes"],
            input_shape=config["input_shape"],
            mean=normalization.get("mean"),
            std=normalization.get("std"),
            classes=config.get("classes"),
            provenance=config.get("provenance"),
            **dict(config.get("arch_params") or {}),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(x))

    def config(self) -> dict[str, Any]:
        """The JSON-able description that rebuilds this model (everything in config.json except provenance)."""
        normalization = None
        if self.mean is not None and self.std is not None:
            normalization = {"mean": list(self.mean), "std": list(self.std)}
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "arch": self.arch,
            "arch_params": dict(self.arch_params),
            "num_classes": self.num_classes,
            "classes": list(self.classes) if self.classes is not None else None,
            "input_shape": list(self.input_shape),
            "normalization": normalization,
        }

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, input_shape={self.input_shape}"


def _processor_size(processor: dict[str, Any]) -> tuple[int, int] | None:
    """Height and width the processor feeds the model, or None when it does not resize."""
    if processor.get("do_center_crop") and processor.get("crop_size") is not None:
        size = processor["crop_size"]
    elif processor.get("do_resize", True):
        size = processor.get("size")
    else:
        return None
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        # A shortest-edge rule keeps the aspect ratio; for the square images robustdistill feeds it is square.
        if "shortest_edge" in size:
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    logger.warning("preprocessor size %r not understood; inputs are not resized", size)
    return None


class HFImageClassifier(nn.Module):
    """A transformers image classifier behind the same contract: x in [0, 1], (N, C, H, W) -> logits.

    Resizing (bilinear) and normalisation follow the model's preprocessor_config.json and happen inside forward,
    so gradients flow back to the [0, 1] pixels.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        processor: dict[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        config = model.config  # type: ignore[attr-defined]
        processor = dict(processor or {})
        channels = int(getattr(config, "num_channels", 3) or 3)
        do_normalize = processor.get("do_normalize", True)
        mean = mean if mean is not None else (processor.get("image_mean") if do_normalize else None)
        std = std if std is not None else (processor.get("image_std") if do_normalize else None)
        self.mean = _channel_stats("image_mean", mean, channels)
        self.std = _channel_stats("image_std", std, channels)
        if (self.mean is None) != (self.std is None):
            raise UserInputError("preprocessor_config.json", "declares only one of image_mean and image_std",
                                 "declare both, or pass mean= and std=")
        self.size = _processor_size(processor)
        architectures = getattr(config, "architectures", None) or [type(model).__name__]
        self.arch = f"hf:{architectures[0]}"
        self.arch_params: dict[str, Any] = {}
        self.num_classes = int(config.num_labels)
        id2label = getattr(config, "id2label", None) or {}
        self.classes: list[str] | None = (
            [str(id2label.get(i, i)) for i in range(self.num_classes)] if id2label else None
        )
        image_size = getattr(config, "image_size", None)
        height, width = self.size or ((image_size, image_size) if isinstance(image_size, int) else (224, 224))
        self.input_shape = (channels, height, width)
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.normalize = _Normalize(self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(pixel_values=self.normalize(x)).logits

    def config(self) -> dict[str, Any]:
        normalization = None
        if self.mean is not None and self.std is not None:
            normalization = {"mean": list(self.mean), "std": list(self.std)}
        return {
            "format": "huggingface.image_classification",
            "arch": self.arch,
            "arch_params": {},
            "num_classes": self.num_classes,
            "classes": self.classes,
            "input_shape": list(self.input_shape),
            "normalization": normalization,
        }
