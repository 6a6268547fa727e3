"""The weight-sharing dynamic network of ProARD: every sub-network is a slice of the largest one.

ProARD (Mousavi, Zoljodi, Daneshtalab et al., "ProARD: Progressive Adversarial Robustness Distillation: Provide Wide
Range of Robust Students", IJCNN 2025, arXiv 2506.07666; official code hamidmousavi0/ProARD) trains one
once-for-all network (Cai et al., "Once-for-All", ICLR 2020) whose sub-networks are robust students of many sizes.
Per stage a sub-network picks (:class:`SubnetConfig`):

- depth: ResNet, extra bottleneck blocks on top of ``base_depth`` {0, 1, 2}; MobileNet, inverted-residual blocks
  {2, 3, 4}. A stage keeps its FIRST blocks (``blocks = base_depth + depth`` in both families; the MobileNet
  presets have ``base_depth`` 0, so there the choice is the block count).
- width (ResNet): a multiplier {0.65, 0.8, 1.0} of the stage's output channels; a stage keeps its FIRST channels.
- expand: ResNet bottleneck ratio {0.2, 0.25, 0.35} (middle = ``make_divisible(round(out * expand))``), MobileNet
  inverted-residual ratio {3, 4, 6} (middle = ``make_divisible(round(in * expand))``); the FIRST middle channels.
- kernel (MobileNet): depthwise kernel {3, 5, 7}, the CENTRE crop of the largest kernel. OFA additionally learns
  kernel-transformation matrices that map the cropped 7x7 centre to the 5x5 (and 5x5 to 3x3) kernel; this
  implementation uses the plain centre crop.

BatchNorm layers are shared the same way: the active channels use the first entries of the full layer's affine
parameters and running statistics (``F.batch_norm`` on slices, so running-statistic updates land in the slice).

Layout. ResNet: stem conv3x3-BN-ReLU, stages of bottlenecks (1x1 reduce, kxk, 1x1 up, BN after each; a projection
shortcut, 1x1 conv + BN, on a stage's first block when its stride or channels can change), global average pool,
linear. MobileNet: stem conv3x3-BN-ReLU6, stages of inverted residuals (1x1 expand, depthwise kxk, 1x1 project, BN
after each; identity residual when stride 1 and in == out), then, when ``head_channels`` > 0, a 1x1 conv-BN-ReLU6 to
that feature dimension as in MobileNetV2 (``head_channels`` 0: straight to the pool), global average pool, linear.

The static network of one sub-network (:class:`SubnetNetwork`, arch ``proard-subnet``) has exactly the parameter
names of the dynamic network, so the largest one's checkpoint IS a dynamic network's state dict.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustdistill.errors import UserInputError
from robustdistill.models import size as model_size
from robustdistill.models.architectures import ARCHITECTURES

logger = logging.getLogger(__name__)

FAMILIES = ("resnet", "mobilenet")
DIMENSIONS = ("depth", "width", "expand", "kernel")
_KEY_LETTERS = {"d": "depth", "w": "width", "e": "expand", "k": "kernel"}


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``divisor`` nor 10% below ``value``
    (the channel rounding of MobileNet/OFA)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def _ints(field: str, values: Any, minimum: int) -> tuple[int, ...]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserInputError(field, f"must be a list of integers, got {values!r}", "e.g. [1, 2]") from None
    if isinstance(values, (str, bytes)) or any(not n.is_integer() or n < minimum for n in numbers):
        raise UserInputError(field, f"must be a list of integers >= {minimum}, got {values!r}", "e.g. [1, 2]")
    return tuple(int(n) for n in numbers)


def _floats(field: str, values: Any) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UserInputError(field, f"must be a list of numbers, got {values!r}", "e.g. [0.8, 1.0]") from None
    if isinstance(values, (str, bytes)) or any(not math.isfinite(n) or n <= 0 for n in numbers):
        raise UserInputError(field, f"must be a list of positive numbers, got {values!r}", "e.g. [0.8, 1.0]")
    return numbers


def _fmt(value: float) -> str:
    return f"{value:g}"


def _match(value: float, choices: Sequence[float]) -> float | None:
    """The choice equal to ``value`` (up to float rounding), or None."""
    return next((c for c in choices if math.isclose(float(value), float(c), rel_tol=1e-9, abs_tol=1e-9)), None)


# --------------------------------------------------------------------------------------------------------------
# Search space and sub-network configurations


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: per stage, the depth CHOICE (ResNet extra blocks; MobileNet blocks), width multiplier,
    expand ratio and kernel size."""

    depth: tuple[int, ...]
    width: tuple[float, ...]
    expand: tuple[float, ...]
    kernel: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", _ints("subnet.depth", self.depth, 0))
        object.__setattr__(self, "width", _floats("subnet.width", self.width))
        object.__setattr__(self, "expand", _floats("subnet.expand", self.expand))
        object.__setattr__(self, "kernel", _ints("subnet.kernel", self.kernel, 1))
        lengths = {len(getattr(self, name)) for name in DIMENSIONS}
        if len(lengths) != 1 or 0 in lengths:
            raise UserInputError("subnet", "depth, width, expand and kernel need one value per stage each",
                                 f"got lengths {[len(getattr(self, n)) for n in DIMENSIONS]}")

    def to_dict(self) -> dict[str, list[Any]]:
        return {name: list(getattr(self, name)) for name in DIMENSIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetConfig:
        if not isinstance(data, Mapping):
            raise UserInputError("subnet", f"must be an object with {', '.join(DIMENSIONS)}, got {data!r}",
                                 'e.g. {"depth": [2, 2], "width": [1, 1], "expand": [0.35, 0.35], "kernel": [3, 3]}')
        unknown = sorted(set(data) - set(DIMENSIONS))
        missing = [name for name in DIMENSIONS if name not in data]
        if unknown or missing:
            problem = f"unknown fields {unknown}" if unknown else f"missing fields {missing}"
            raise UserInputError("subnet", problem, f"give exactly {', '.join(DIMENSIONS)}")
        return cls(**{name: data[name] for name in DIMENSIONS})

    def key(self) -> str:
        """Short stable name, e.g. ``d1-2_w0.8-1_e0.25-0.35_k3-3``; :meth:`parse` reads it back."""
        return "_".join(letter + "-".join(_fmt(v) for v in getattr(self, name))
                        for letter, name in _KEY_LETTERS.items())

    @classmethod
    def parse(cls, text: str, space: SearchSpace) -> SubnetConfig:
        """The inverse of :meth:`key` (also ``largest`` and ``smallest``), checked against ``space``."""
        if not isinstance(text, str):
            raise UserInputError("subnet", f"must be a key string, got {text!r}", f"e.g. {space.largest().key()!r}")
        word = text.strip().lower()
        if word in ("largest", "smallest"):
            return space.largest() if word == "largest" else space.smallest()
        values: dict[str, list[float]] = {}
        for part in word.split("_"):
            name = _KEY_LETTERS.get(part[:1])
            if name is None or name in values:
                raise UserInputError("subnet", f"cannot read {text!r}",
                                     f"write d..._w..._e..._k... like {space.largest().key()!r}, or largest/smallest")
            try:
                values[name] = [float(v) for v in part[1:].split("-")]
            except ValueError:
                raise UserInputError("subnet", f"{part!r} in {text!r} is not a list of numbers joined by '-'",
                                     f"e.g. {space.largest().key()!r}") from None
        missing = [name for name in DIMENSIONS if name not in values]
        if missing:
            raise UserInputError("subnet", f"{text!r} does not give {', '.join(missing)}",
                                 f"e.g. {space.largest().key()!r}")
        for name in ("depth", "kernel"):
            bad = [v for v in values[name] if not float(v).is_integer()]
            if bad:
                raise UserInputError("subnet", f"{name} {_fmt(bad[0])} is not an integer", f"e.g. {space.largest().key()!r}")
        return space.validate(cls(**values))  # type: ignore[arg-type]


@dataclass(frozen=True)
class SearchSpace:
    """The choices of a once-for-all network (ProARD, arXiv 2506.07666, Sec. III; OFA's ResNet and MobileNet spaces).

    ``divisor`` rounds channel counts (:func:`make_divisible`); the small presets use a small one so that every
    choice gives a distinct size. ``head_channels`` (an addition): the MobileNetV2-style final 1x1 conv before the
    pool, 0 for none.
    """

    family: str
    stem_channels: int
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    base_depth: tuple[int, ...]
    depth_choices: tuple[int, ...]
    width_choices: tuple[float, ...]
    expand_choices: tuple[float, ...]
    kernel_choices: tuple[int, ...]
    divisor: int = 8
    head_channels: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserInputError("space.family", f"unknown family {self.family!r}", f"choose one of {', '.join(FAMILIES)}")

        def put(name: str, value: Any) -> None:  # frozen dataclass: store the normalised value
            object.__setattr__(self, name, value)

        for name in ("stem_channels", "divisor"):
            put(name, _ints(f"space.{name}", [getattr(self, name)], 1)[0])
        put("head_channels", _ints("space.head_channels", [self.head_channels], 0)[0])
        put("stage_channels", _ints("space.stage_channels", self.stage_channels, 1))
        put("stage_strides", _ints("space.stage_strides", self.stage_strides, 1))
        put("base_depth", _ints("space.base_depth", self.base_depth, 0))
        stages = len(self.stage_channels)
        if stages == 0:
            raise UserInputError("space.stage_channels", "is empty", "give the output channels of each stage")
        for name in ("stage_strides", "base_depth"):
            if len(getattr(self, name)) != stages:
                raise UserInputError(f"space.{name}", f"has {len(getattr(self, name))} values for {stages} stages",
                                     "give one value per stage (as many as stage_channels)")
        put("depth_choices", tuple(sorted(set(_ints("space.depth_choices", self.depth_choices, 0)))))
        put("width_choices", tuple(sorted(set(_floats("space.width_choices", self.width_choices)))))
        put("expand_choices", tuple(sorted(set(_floats("space.expand_choices", self.expand_choices)))))
        put("kernel_choices", tuple(sorted(set(_ints("space.kernel_choices", self.kernel_choices, 1)))))
        for name in ("depth_choices", "width_choices", "expand_choices", "kernel_choices"):
            if not getattr(self, name):
                raise UserInputError(f"space.{name}", "is empty", "give at least one choice")
        if any(k % 2 == 0 for k in self.kernel_choices):
            raise UserInputError("space.kernel_choices", f"must be odd, got {list(self.kernel_choices)}", "e.g. [3, 5, 7]")
        if any(b + self.depth_choices[0] < 1 for b in self.base_depth):
            raise UserInputError("space.depth_choices", "the smallest choice leaves a stage without blocks",
                                 "raise base_depth or the smallest depth choice so every stage keeps a block")
        if self.family == "mobilenet" and len(self.width_choices) != 1:
            raise UserInputError("space.width_choices", "the MobileNet family has a fixed width", "use [1.0]")

    @property
    def num_stages(self) -> int:
        return len(self.stage_channels)

    def choices(self, dimension: str) -> tuple[Any, ...]:
        return getattr(self, f"{dimension}_choices")

    def largest(self) -> SubnetConfig:
        return SubnetConfig(**{d: (self.choices(d)[-1],) * self.num_stages for d in DIMENSIONS})

    def smallest(self) -> SubnetConfig:
        return SubnetConfig(**{d: (self.choices(d)[0],) * self.num_stages for d in DIMENSIONS})

    def allowed_choices(self, allowed: Mapping[str, Sequence[Any]] | None = None) -> dict[str, tuple[Any, ...]]:
        """Per dimension, the choices ``allowed`` opens (all for None; only the largest for a missing key)."""
        if allowed is None:
            return {d: self.choices(d) for d in DIMENSIONS}
        if not isinstance(allowed, Mapping):
            raise UserInputError("allowed", f"must map dimensions to choices, got {allowed!r}", 'e.g. {"width": [0.8, 1.0]}')
        unknown = sorted(set(allowed) - set(DIMENSIONS))
        if unknown:
            raise UserInputError("allowed", f"unknown dimensions {unknown}", f"use {', '.join(DIMENSIONS)}")
        result: dict[str, tuple[Any, ...]] = {}
        for d in DIMENSIONS:
            values = allowed.get(d)
            if values is None:
                result[d] = (self.choices(d)[-1],)
                continue
            picked = set()
            for value in values:
                choice = _match(value, self.choices(d))
                if choice is None:
                    raise UserInputError(f"allowed.{d}", f"{value!r} is not a choice of this space",
                                         f"choose from {', '.join(_fmt(c) for c in self.choices(d))}")
                picked.add(choice)
            if not picked:
                raise UserInputError(f"allowed.{d}", "is empty", "give at least one choice, or leave the key out")
            result[d] = tuple(sorted(picked))
        return result

    def sample(self, generator: torch.Generator, allowed: Mapping[str, Sequence[Any]] | None = None) -> SubnetConfig:
        """A random sub-network: each stage's value of each dimension drawn uniformly and independently."""
        options = self.allowed_choices(allowed)
        picks = {}
        for d in DIMENSIONS:
            index = torch.randint(len(options[d]), (self.num_stages,), generator=generator, device=generator.device)
            picks[d] = tuple(options[d][i] for i in index.tolist())
        return SubnetConfig(**picks)

    def size(self, allowed: Mapping[str, Sequence[Any]] | None = None) -> int:
        """The number of distinct sub-network configurations."""
        return math.prod(len(values) ** self.num_stages for values in self.allowed_choices(allowed).values())

    def validate(self, subnet: SubnetConfig) -> SubnetConfig:
        """``subnet`` with its values snapped to this space's choices; UserInputError naming any value outside."""
        if not isinstance(subnet, SubnetConfig):
            raise UserInputError("subnet", f"must be a SubnetConfig, got {type(subnet).__name__}",
                                 "use SubnetConfig.parse or SubnetConfig.from_dict")
        values: dict[str, tuple[Any, ...]] = {}
        for d in DIMENSIONS:
            given = getattr(subnet, d)
            if len(given) != self.num_stages:
                raise UserInputError(f"subnet.{d}", f"has {len(given)} values for {self.num_stages} stages",
                                     f"e.g. {self.largest().key()!r}")
            snapped = []
            for stage, value in enumerate(given):
                choice = _match(value, self.choices(d))
                if choice is None:
                    raise UserInputError(f"subnet.{d}", f"{_fmt(value)} (stage {stage + 1}) is not in this search space",
                                         f"choose from {', '.join(_fmt(c) for c in self.choices(d))}")
                snapped.append(choice)
            values[d] = tuple(snapped)
        return SubnetConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, Mapping):
            raise UserInputError("space", f"must be a preset name or an object, got {data!r}",
                                 f"a preset ({', '.join(SPACES)}) or an object with {', '.join(fields)}")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserInputError(f"space.{unknown[0]}", "is not a search-space field", f"fields: {', '.join(fields)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise UserInputError(f"space.{missing[0]}", "is missing", f"give {', '.join(required)}")
        return cls(**dict(data))


SPACES: dict[str, SearchSpace] = {
    # 1x8x8 digits: tiny, every choice a distinct size (divisor 2); the stem works at 8x8, both stages at 4x4 (as
    # cnn-small pools to 4x4 after its first conv), which keeps a TRADES epoch of the largest network near 4 s.
    "resnet-digits": SearchSpace(
        family="resnet", stem_channels=16, stage_channels=(48, 96), stage_strides=(2, 1), base_depth=(1, 1),
        depth_choices=(0, 1, 2), width_choices=(0.65, 0.8, 1.0), expand_choices=(0.2, 0.25, 0.35),
        kernel_choices=(3,), divisor=2),
    # Kept narrower than the ResNet: on CPU, PyTorch's depthwise 5x5/7x7 weight gradients are slow.
    "mobilenet-digits": SearchSpace(
        family="mobilenet", stem_channels=8, stage_channels=(8, 16), stage_strides=(2, 1), base_depth=(0, 0),
        depth_choices=(2, 3, 4), width_choices=(1.0,), expand_choices=(3.0, 4.0, 6.0), kernel_choices=(3, 5, 7),
        divisor=2),
    # 32x32: OFA's ResNet-50 space (base depth 2-2-4-2, 256-2048 channels) with a CIFAR stem (3x3, stride 1).
    "resnet-cifar10": SearchSpace(
        family="resnet", stem_channels=64, stage_channels=(256, 512, 1024, 2048), stage_strides=(1, 2, 2, 2),
        base_depth=(2, 2, 4, 2), depth_choices=(0, 1, 2), width_choices=(0.65, 0.8, 1.0),
        expand_choices=(0.2, 0.25, 0.35), kernel_choices=(3,), divisor=8),
    # 32x32: MobileNetV2-CIFAR-like (kuangliu's stage widths and strides, 1280-wide head) with OFA's elastic
    # depth {2,3,4}, expand {3,4,6} and kernel {3,5,7}.
    "mobilenet-cifar10": SearchSpace(
        family="mobilenet", stem_channels=32, stage_channels=(24, 32, 64, 96, 160), stage_strides=(1, 2, 2, 1, 2),
        base_depth=(0, 0, 0, 0, 0), depth_choices=(2, 3, 4), width_choices=(1.0,), expand_choices=(3.0, 4.0, 6.0),
        kernel_choices=(3, 5, 7), divisor=8, head_channels=1280),
}


def space_from(value: str | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """A preset (by name) or a search space given as a dict (:meth:`SearchSpace.to_dict`)."""
    if isinstance(value, SearchSpace):
        return value
    if isinstance(value, str):
        if value.strip() not in SPACES:
            raise UserInputError("space", f"unknown search space {value!r}", f"choose one of {', '.join(SPACES)}, or give a dict")
        return SPACES[value.strip()]
    return SearchSpace.from_dict(value)


def _subnet_from(value: str | Mapping[str, Any] | SubnetConfig, space: SearchSpace) -> SubnetConfig:
    if isinstance(value, str):
        return SubnetConfig.parse(value, space)
    return space.validate(value if isinstance(value, SubnetConfig) else SubnetConfig.from_dict(value))


# --------------------------------------------------------------------------------------------------------------
# Blocks: a static forward (plain modules) and an active forward (slices of the largest block's weights)


@dataclass(frozen=True)
class _BlockShape:
    in_channels: int
    mid: int
    out: int
    stride: int
    kernel: int
    projection: bool  # ResNet: 1x1 conv + BN shortcut; MobileNet: always False


def _first_block_projects(space: SearchSpace, stage: int) -> bool:
    """ResNet: a stage's first block needs a projection shortcut when its stride or channel count can differ."""
    top = space.width_choices[-1]
    channels_in = space.stem_channels if stage == 0 else make_divisible(space.stage_channels[stage - 1] * top,
                                                                        space.divisor)
    channels_out = make_divisible(space.stage_channels[stage] * top, space.divisor)
    return space.stage_strides[stage] != 1 or len(space.width_choices) > 1 or channels_in != channels_out


def _layout(space: SearchSpace, subnet: SubnetConfig) -> list[list[_BlockShape]]:
    """Per stage, the shapes of the sub-network's blocks."""
    stages = []
    channels = space.stem_channels
    for i in range(space.num_stages):
        out = make_divisible(space.stage_channels[i] * subnet.width[i], space.divisor)
        blocks = []
        for j in range(space.base_depth[i] + subnet.depth[i]):
            base = out if space.family == "resnet" else channels
            mid = make_divisible(round(base * subnet.expand[i]), space.divisor)
            projection = space.family == "resnet" and j == 0 and _first_block_projects(space, i)
            blocks.append(_BlockShape(channels, mid, out, space.stage_strides[i] if j == 0 else 1, subnet.kernel[i],
                                      projection))
            channels = out
        stages.append(blocks)
    return stages


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)


def _conv_active(conv: nn.Conv2d, x: torch.Tensor, out_channels: int, kernel: int | None = None) -> torch.Tensor:
    """``conv`` restricted to its first ``out_channels`` outputs, the input's channels, and a centre-cropped kernel."""
    if conv.groups == 1:
        weight, groups = conv.weight[:out_channels, : x.shape[1]], 1
    else:  # depthwise: channel c convolves input channel c
        weight, groups = conv.weight[:out_channels], out_channels
    if kernel is not None and kernel < weight.shape[-1]:
        start = (weight.shape[-1] - kernel) // 2
        weight = weight[..., start:start + kernel, start:start + kernel]
    return F.conv2d(x, weight, None, conv.stride, weight.shape[-1] // 2, 1, groups)


def _bn_active(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn`` on the input's channels: the first entries of its parameters and running statistics (updated in place
    in training mode, with the module's momentum rule, momentum=None meaning a cumulative average)."""
    channels = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or bn.running_mean is None
    keep = not bn.training or bn.track_running_stats
    mean = bn.running_mean[:channels] if keep and bn.running_mean is not None else None
    var = bn.running_var[:channels] if keep and bn.running_var is not None else None
    weight = bn.weight[:channels] if bn.weight is not None else None
    bias = bn.bias[:channels] if bn.bias is not None else None
    return F.batch_norm(x, mean, var, weight, bias, batch_stats, factor, bn.eps)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce to ``mid``, kxk (the stride), 1x1 up to ``out``, BN after each, ReLU."""

    def __init__(self, shape: _BlockShape) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(shape.in_channels, shape.mid, 1), nn.BatchNorm2d(shape.mid)
        self.conv2, self.bn2 = _conv(shape.mid, shape.mid, shape.kernel, shape.stride), nn.BatchNorm2d(shape.mid)
        self.conv3, self.bn3 = _conv(shape.mid, shape.out, 1), nn.BatchNorm2d(shape.out)
        self.shortcut = (nn.Sequential(_conv(shape.in_channels, shape.out, 1, shape.stride), nn.BatchNorm2d(shape.out))
                         if shape.projection else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))

    def forward_active(self, x: torch.Tensor, shape: _BlockShape) -> torch.Tensor:
        out = F.relu(_bn_active(self.bn1, _conv_active(self.conv1, x, shape.mid)))
        out = F.relu(_bn_active(self.bn2, _conv_active(self.conv2, out, shape.mid, shape.kernel)))
        out = _bn_active(self.bn3, _conv_active(self.conv3, out, shape.out))
        if self.shortcut is not None:
            x = _bn_active(self.shortcut[1], _conv_active(self.shortcut[0], x, shape.out))
        return F.relu(out + x)

    def batchnorm_channels(self, shape: _BlockShape) -> dict[_BatchNorm, int]:
        used: dict[_BatchNorm, int] = {self.bn1: shape.mid, self.bn2: shape.mid, self.bn3: shape.out}
        if self.shortcut is not None:
            used[self.shortcut[1]] = shape.out
        return used


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand to ``mid``, depthwise kxk (the stride), 1x1 project, BN after each, ReLU6;
    identity residual when stride 1 and in == out."""

    def __init__(self, shape: _BlockShape) -> None:
        super().__init__()
        self.residual = shape.stride == 1 and shape.in_channels == shape.out
        self.conv1, self.bn1 = _conv(shape.in_channels, shape.mid, 1), nn.BatchNorm2d(shape.mid)
        self.conv2 = _conv(shape.mid, shape.mid, shape.kernel, shape.stride, groups=shape.mid)
        self.bn2 = nn.BatchNorm2d(shape.mid)
        self.conv3, self.bn3 = _conv(shape.mid, shape.out, 1), nn.BatchNorm2d(shape.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.residual else out

    def forward_active(self, x: torch.Tensor, shape: _BlockShape) -> torch.Tensor:
        out = F.relu6(_bn_active(self.bn1, _conv_active(self.conv1, x, shape.mid)))
        out = F.relu6(_bn_active(self.bn2, _conv_active(self.conv2, out, shape.mid, shape.kernel)))
        out = _bn_active(self.bn3, _conv_active(self.conv3, out, shape.out))
        return out + x if self.residual else out

    def batchnorm_channels(self, shape: _BlockShape) -> dict[_BatchNorm, int]:
        return {self.bn1: shape.mid, self.bn2: shape.mid, self.bn3: shape.out}


# --------------------------------------------------------------------------------------------------------------
# Networks


class _ProARDNetwork(nn.Module):
    """The modules of one sub-network (shared by the static and the dynamic network, so their names agree)."""

    def __init__(self, space: SearchSpace, subnet: SubnetConfig, num_classes: int, in_channels: int,
                 input_size: int) -> None:
        super().__init__()
        self.space = space
        self.input_size = input_size
        self.act: Callable[[torch.Tensor], torch.Tensor] = F.relu if space.family == "resnet" else F.relu6
        block = Bottleneck if space.family == "resnet" else InvertedResidual
        layout = _layout(space, subnet)
        self.conv1, self.bn1 = _conv(in_channels, space.stem_channels, 3), nn.BatchNorm2d(space.stem_channels)
        self.stages = nn.ModuleList(nn.Sequential(*(block(shape) for shape in shapes)) for shapes in layout)
        features = layout[-1][-1].out
        if space.head_channels:
            self.conv2, self.bn2 = _conv(features, space.head_channels, 1), nn.BatchNorm2d(space.head_channels)
            features = space.head_channels
        self.linear = nn.Linear(features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class SubnetNetwork(_ProARDNetwork):
    """A static ProARD sub-network (arch ``proard-subnet``): plain modules sized for ``subnet``."""

    def __init__(self, space: SearchSpace, subnet: SubnetConfig, num_classes: int, in_channels: int,
                 input_size: int) -> None:
        subnet = space.validate(subnet)
        super().__init__(space, subnet, num_classes, in_channels, input_size)
        self.subnet = subnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        if self.space.head_channels:
            x = self.act(self.bn2(self.conv2(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def extra_repr(self) -> str:
        return f"family={self.space.family!r}, subnet={self.subnet.key()!r}"


class DynamicNetwork(_ProARDNetwork):
    """The once-for-all network of ProARD (arXiv 2506.07666): the largest sub-network's weights, run as any
    sub-network of ``space`` (:meth:`set_active`). Its state dict is that of ``build_subnet(space, largest)``."""

    def __init__(self, space: SearchSpace, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__(space, space.largest(), num_classes, in_channels, input_size)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.set_active(space.largest())

    def set_active(self, subnet: SubnetConfig) -> None:
        """Make ``forward`` run ``subnet`` (a SubnetConfig; a key string or dict is accepted too)."""
        self.active = _subnet_from(subnet, self.space)
        self._shapes = _layout(self.space, self.active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(_bn_active(self.bn1, _conv_active(self.conv1, x, self.space.stem_channels)))
        for stage, shapes in zip(self.stages, self._shapes):
            for block, shape in zip(stage, shapes):  # the first len(shapes) blocks: elastic depth
                x = block.forward_active(x, shape)
        if self.space.head_channels:
            x = self.act(_bn_active(self.bn2, _conv_active(self.conv2, x, self.space.head_channels)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, self.linear.weight[:, : x.shape[1]], self.linear.bias)

    def active_batchnorms(self) -> dict[_BatchNorm, int]:
        """The BatchNorm layers the active sub-network runs, each with the number of (first) channels it uses."""
        used: dict[_BatchNorm, int] = {self.bn1: self.space.stem_channels}
        for stage, shapes in zip(self.stages, self._shapes):
            for block, shape in zip(stage, shapes):
                used.update(block.batchnorm_channels(shape))
        if self.space.head_channels:
            used[self.bn2] = self.space.head_channels
        return used

    def extract(self, subnet: SubnetConfig) -> SubnetNetwork:
        """A static network holding copies (not views) of ``subnet``'s slices of the weights and statistics,
        on this network's device, dtype and training mode."""
        subnet = _subnet_from(subnet, self.space)
        reference = self.linear.weight
        static = SubnetNetwork(self.space, subnet, self.num_classes, self.in_channels, self.input_size)
        static.to(device=reference.device, dtype=reference.dtype)
        full = self.state_dict()
        static.load_state_dict({name: _slice_like(full[name], tensor.shape)
                                for name, tensor in static.state_dict().items()}, strict=True)
        return static.train(self.training)

    @torch.no_grad()
    def reorder_channels(self) -> None:
        """OFA's importance-based channel sorting (Cai et al. 2020, Sec. 3.2; ProARD's progressive stages).

        Channel importance is the L1 norm of the weights that read the channel. Every block's middle channels are
        sorted by it (ResNet: both sides of the kxk conv), and, in the ResNet family, every stage's output channels
        where the stage's channels are independent of its neighbours' (projection shortcuts at both ends). Weights
        and BatchNorm statistics are permuted consistently, in place, so the largest network computes the same
        function and slices keep the most important channels. Optimizer state is NOT permuted: call it before
        building the optimizer.
        """
        if self.space.family == "resnet":
            for i, stage in enumerate(self.stages):
                following = self.stages[i + 1][0] if i + 1 < len(self.stages) else None
                if stage[0].shortcut is None or (following is not None and following.shortcut is None):
                    logger.debug("stage %d: width channels tied to a neighbour by an identity shortcut; kept", i + 1)
                    continue
                readers: list[nn.Module] = [block.conv1 for block in stage[1:]]
                if following is not None:
                    readers += [following.conv1, following.shortcut[0]]
                else:
                    readers.append(self.conv2 if self.space.head_channels else self.linear)
                order = _descending(sum(_input_importance(m.weight) for m in readers))
                for block in stage:
                    _permute(block.conv3.weight, 0, order)
                    _permute_bn(block.bn3, order)
                    if block.shortcut is not None:
                        _permute(block.shortcut[0].weight, 0, order)
                        _permute_bn(block.shortcut[1], order)
                for reader in readers:
                    _permute(reader.weight, 1, order)
        for stage in self.stages:
            for block in stage:
                order = _descending(_input_importance(block.conv3.weight))
                _permute(block.conv3.weight, 1, order)
                _permute(block.conv2.weight, 0, order)
                _permute_bn(block.bn2, order)
                if isinstance(block, Bottleneck):
                    order = _descending(_input_importance(block.conv2.weight))
                    _permute(block.conv2.weight, 1, order)
                _permute(block.conv1.weight, 0, order)
                _permute_bn(block.bn1, order)
        logger.info("reordered channels of the %s dynamic network by L1 importance", self.space.family)

    def extra_repr(self) -> str:
        return f"family={self.space.family!r}, active={self.active.key()!r}"


def _slice_like(full: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The first entries of ``full`` along each dimension, except the centre of a conv kernel's spatial dims."""
    index = []
    for dim, size in enumerate(shape):
        start = (full.shape[dim] - size) // 2 if full.dim() == 4 and dim >= 2 else 0
        index.append(slice(start, start + size))
    return full[tuple(index)].clone()


def _input_importance(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().sum(dim=[d for d in range(weight.dim()) if d != 1])


def _descending(importance: torch.Tensor) -> torch.Tensor:
    return torch.argsort(importance, descending=True, stable=True)


def _permute(tensor: torch.Tensor, dim: int, order: torch.Tensor) -> None:
    tensor.copy_(tensor.index_select(dim, order))


def _permute_bn(bn: _BatchNorm, order: torch.Tensor) -> None:
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if tensor is not None:
            _permute(tensor, 0, order)


def build_subnet(space: SearchSpace, subnet: SubnetConfig, num_classes: int, in_channels: int,
                 input_size: int) -> SubnetNetwork:
    """A freshly initialised static network of one sub-network."""
    return SubnetNetwork(space, subnet, num_classes, in_channels, input_size)


@ARCHITECTURES.register("proard-subnet")
def proard_subnet(*, num_classes: int, in_channels: int, input_size: int,
                  space: str | Mapping[str, Any] = "resnet-cifar10",
                  subnet: str | Mapping[str, Any] = "largest") -> nn.Module:
    """A ProARD sub-network (Mousavi et al., IJCNN 2025, arXiv 2506.07666): ``space`` a preset name or a search-space
    dict, ``subnet`` a SubnetConfig dict, a key, ``largest`` or ``smallest``. The largest holds a whole family."""
    resolved = space_from(space)
    return build_subnet(resolved, _subnet_from(subnet, resolved), num_classes, in_channels, input_size)


# --------------------------------------------------------------------------------------------------------------
# Measurements and BatchNorm recalibration


def count_params(module: nn.Module) -> int:
    """The number of parameters (for a sub-network of a DynamicNetwork, count its :meth:`~DynamicNetwork.extract`)."""
    return model_size.count_params(module)


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the conv and linear layers for ONE input of ``input_shape`` (C, H, W). A
    DynamicNetwork is measured as its active sub-network (forward hooks cannot see the slices it runs)."""
    if isinstance(module, DynamicNetwork):
        module = module.extract(module.active)
    elif any(isinstance(m, DynamicNetwork) for m in module.modules()):
        raise UserInputError("module", "contains a DynamicNetwork, whose layers run as slices that hooks cannot see",
                             "count an extracted sub-network: count_macs(network.extract(subnet), input_shape)")
    return model_size.count_macs(module, input_shape)


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics on ``x`` (ProARD evaluates every sub-network this way, on ~4,000
    training images, since the shared statistics mix all sampled sub-networks; OFA does the same).

    The statistics used are reset and re-estimated as the exact size-weighted average over ``x`` of the per-batch
    statistics (a cumulative average, like momentum=None, weighted by batch size so a short last batch counts for
    what it holds), in train mode under no_grad. Only ``running_mean`` and ``running_var`` change: parameters, other
    buffers (``num_batches_tracked`` included), momentum and every module's training flag are restored. For a
    DynamicNetwork only the active sub-network's slices change; since sub-networks share them, recalibrate an
    :meth:`~DynamicNetwork.extract`-ed copy to keep the family's statistics intact.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError("batch_size", f"must be a positive integer, got {batch_size!r}", "e.g. 256")
    if len(x) == 0:
        raise UserInputError("x", "holds no images", "pass the calibration images (e.g. 4,000 training images)")
    dynamic = [m for m in model.modules() if isinstance(m, DynamicNetwork)]
    inside = {bn for net in dynamic for bn in net.modules() if isinstance(bn, _BatchNorm)}
    used: dict[_BatchNorm, int] = {bn: n for net in dynamic for bn, n in net.active_batchnorms().items()}
    used.update({m: m.num_features for m in model.modules()
                 if isinstance(m, _BatchNorm) and m not in inside and m.running_mean is not None})
    if not used:
        return
    flags = {m: m.training for m in model.modules()}
    saved = {bn: (bn.momentum, None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone())
             for bn in used}
    reference = next(model.parameters(), None)
    seen = 0
    try:
        with torch.no_grad():
            for bn, channels in used.items():
                bn.running_mean[:channels].zero_()
                bn.running_var[:channels].fill_(1.0)
            model.train()
            for batch in x.split(batch_size):
                seen += len(batch)
                for bn in used:
                    bn.momentum = len(batch) / seen
                model(batch.to(reference.device) if reference is not None else batch)
    finally:
        for bn, (momentum, tracked) in saved.items():
            bn.momentum = momentum
            if tracked is not None:
                bn.num_batches_tracked.copy_(tracked)
        for m, flag in flags.items():
            m.training = flag
    logger.debug("recalibrated %d BatchNorm layers on %d images", len(used), seen)
