"""ProARD's search spaces and sub-network configurations (no network code).

What lives here: :class:`SearchSpace` (a once-for-all family's per-stage choices of depth, width, expand ratio and
kernel, with sampling, validation, counting and dict form), :class:`SubnetConfig` (one sub-network: checking, dict
form, its short key and :meth:`~SubnetConfig.parse`), the preset spaces :data:`SPACES` with :func:`space_from`, and
the channel rounding :func:`make_divisible`; the networks built from them are in
:mod:`robustdistill.models.dynamic` (see its docstring for what each choice means).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from robustdistill.errors import UserInputError

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
