"""Image-classifier architectures, registered by name.

Every network maps (N, C, H, W) to raw logits (N, num_classes) and expects already-normalised input; the
:class:`~robustdistill.models.classifier.Classifier` wrapper applies the normalisation.

The CIFAR networks keep the parameter names of the checkpoints people actually share, so their state dicts load
unchanged:

- ``resnet18-cifar``: kuangliu/pytorch-cifar ``models/resnet.py`` ResNet-18 (3x3 stem, no max-pool, ``linear``).
- ``preact-resnet18``: RobustBench ``PreActResNet`` (``model_zoo/architectures/resnet.py``), with the optional
  ``bn`` before ``linear`` that robust checkpoints (Rice et al. 2020, Addepalli et al. 2021) carry; with
  ``bn_before_fc=False`` it is exactly kuangliu's ``models/preact_resnet.py``.
- ``wrn-34-10``: RobustBench ``WideResNet`` (``model_zoo/architectures/wide_resnet.py``, from TRADES), including
  the unused-in-forward ``sub_block1`` some TRADES-lineage checkpoints contain.
- ``mobilenetv2-cifar``: kuangliu/pytorch-cifar ``models/mobilenetv2.py`` (stride-1 stem and second stage).

The originals pool with a fixed kernel sized for 32x32 input; adaptive average pooling gives identical results
at 32x32 and lets the same weights run on other sizes.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_PARAMETERS
from robustdistill.registry import Registry

logger = logging.getLogger(__name__)

ARCHITECTURES: Registry[nn.Module] = Registry("architecture")


def build_network(arch: str, num_classes: int, in_channels: int, input_size: int, **arch_params: Any) -> nn.Module:
    """Build the registered network ``arch``; returns an ``nn.Module`` producing raw logits."""
    factory = ARCHITECTURES.get(arch)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserInputError("num_classes", f"must be a positive integer, got {num_classes!r}", "e.g. num_classes=10")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UserInputError("input_shape", f"channels must be a positive integer, got {in_channels!r}",
                             "e.g. input_shape=(3, 32, 32)")
    if not isinstance(input_size, int) or input_size < 4:
        raise UserInputError("input_shape", f"image size must be an integer >= 4, got {input_size!r}",
                             "e.g. input_shape=(3, 32, 32)")
    accepted = _keyword_names(factory)
    unknown = sorted(set(arch_params) - accepted)
    if unknown:
        choices = ", ".join(sorted(accepted)) or "none"
        raise UserInputError("arch_params", f"{arch} does not take {', '.join(unknown)}",
                             f"parameters it takes: {choices}")
    # Sized on the meta device first (no memory, no random draws): arch_params such as width=10**8 would otherwise
    # ask the allocator for petabytes and end in a traceback.
    with torch.device("meta"):
        sized = factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **arch_params)
    count = sum(t.numel() for t in (*sized.parameters(), *sized.buffers()))
    if count > MAX_PARAMETERS:
        raise UserInputError("arch_params", f"{arch} with {arch_params or 'these settings'} has {count:,} parameters, "
                             f"more than the limit of {MAX_PARAMETERS:,}", "use smaller widths or depths")
    return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **arch_params)


def infer_arch_params(arch: str, keys: Iterable[str]) -> dict[str, Any]:
    """Architecture switches that a state dict's keys reveal (so users need not know which variant they hold)."""
    names = set(keys)
    if arch == "wrn-34-10":
        found: dict[str, Any] = {"sub_block1": any(k.startswith("sub_block1.") for k in names)}
        if "fc.weight" in names and "fc.bias" not in names:
            found["bias_last"] = False
        return found
    if arch == "preact-resnet18":
        return {"bn_before_fc": "bn.weight" in names}
    return {}


def _keyword_names(factory: Callable[..., Any]) -> set[str]:
    fixed = {"num_classes", "in_channels", "input_size"}
    params = inspect.signature(factory).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in fixed}


# --------------------------------------------------------------------------------------------------------------
# Small CNNs for 8x8 digits (and anything else small): teacher and student sizes.


class SmallCNN(nn.Module):
    """conv-ReLU-maxpool, conv-ReLU, adaptive average pool to 4x4, two fully connected layers."""

    def __init__(self, num_classes: int, in_channels: int, width: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(2 * width * 16, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.relu(self.conv2(out))
        out = F.adaptive_avg_pool2d(out, 4).flatten(1)
        return self.fc2(F.relu(self.fc1(out)))


@ARCHITECTURES.register("cnn-small")
def cnn_small(*, num_classes: int, in_channels: int, input_size: int, width: int = 32, hidden: int = 64) -> nn.Module:
    """Teacher-sized CNN (about 85k parameters for 1x8x8 input and 10 classes)."""
    return SmallCNN(num_classes, in_channels, width, hidden)


@ARCHITECTURES.register("cnn-tiny")
def cnn_tiny(*, num_classes: int, in_channels: int, input_size: int, width: int = 8, hidden: int = 32) -> nn.Module:
    """Student-sized CNN (about 10k parameters for 1x8x8 input and 10 classes)."""
    return SmallCNN(num_classes, in_channels, width, hidden)


# --------------------------------------------------------------------------------------------------------------
# ResNet-18 (kuangliu/pytorch-cifar layout).


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
            layers = []
            for block_stride in [1 if index == 1 else 2] + [1] * (blocks - 1):
                layers.append(_BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@ARCHITECTURES.register("resnet18-cifar")
def resnet18_cifar(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """ResNet-18 for 32x32 input (He et al. 2016), kuangliu/pytorch-cifar parameter names."""
    return ResNetCifar((2, 2, 2, 2), num_classes, in_channels)


# --------------------------------------------------------------------------------------------------------------
# PreAct ResNet-18 (RobustBench / kuangliu layout).


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in kuangliu's block and RobustBench's PreActBlockV2,
        # which the published robust PreAct checkpoints were trained with.
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNetCifar(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int, bn_before_fc: bool) -> None:
        super().__init__()
        self.bn_before_fc = bn_before_fc
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
            layers = []
            for block_stride in [1 if index == 1 else 2] + [1] * (blocks - 1):
                layers.append(_PreActBlock(in_planes, planes, block_stride))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@ARCHITECTURES.register("preact-resnet18")
def preact_resnet18(*, num_classes: int, in_channels: int, input_size: int, bn_before_fc: bool = True) -> nn.Module:
    """Pre-activation ResNet-18 (He et al. 2016b), RobustBench names; ``bn_before_fc=False`` gives kuangliu's."""
    return PreActResNetCifar((2, 2, 2, 2), num_classes, in_channels, bn_before_fc)


# --------------------------------------------------------------------------------------------------------------
# WideResNet (RobustBench / TRADES layout).


class _WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original's quirk, kept for weight compatibility: when the width changes, the projection shortcut
        # takes the pre-activated input; otherwise the identity takes the raw input.
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class _NetworkBlock(nn.Module):
    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                _WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int, sub_block1: bool,
                 drop_rate: float, bias_last: bool) -> None:
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        if sub_block1:
            # Present in TRADES-lineage checkpoints but never used in forward; kept so strict loading works.
            self.sub_block1 = _NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = _NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = _NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@ARCHITECTURES.register("wrn-34-10")
def wrn_34_10(*, num_classes: int, in_channels: int, input_size: int, depth: int = 34, widen_factor: int = 10,
              sub_block1: bool = False, drop_rate: float = 0.0, bias_last: bool = True) -> nn.Module:
    """WideResNet (Zagoruyko & Komodakis 2016) as used by TRADES and RobustBench; depth/widen_factor adjustable."""
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise UserInputError("arch_params.depth", f"must be 6n+4 with n >= 1, got {depth!r}", "e.g. 34, 28, 16, 10")
    if not isinstance(widen_factor, int) or widen_factor < 1:
        raise UserInputError("arch_params.widen_factor", f"must be a positive integer, got {widen_factor!r}", "e.g. 10")
    return WideResNet(depth, widen_factor, num_classes, in_channels, sub_block1, drop_rate, bias_last)


# --------------------------------------------------------------------------------------------------------------
# MobileNetV2 (kuangliu/pytorch-cifar layout).


class _InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Cifar(nn.Module):
    # (expansion, out_planes, num_blocks, stride); the second stage's stride is 1 for 32x32 input.
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in self.STAGES:
            for block_stride in [stride] + [1] * (num_blocks - 1):
                blocks.append(_InvertedResidual(in_planes, out_planes, expansion, block_stride))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@ARCHITECTURES.register("mobilenetv2-cifar")
def mobilenetv2_cifar(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018) with the CIFAR stride changes, kuangliu/pytorch-cifar names."""
    return MobileNetV2Cifar(num_classes, in_channels)


# --------------------------------------------------------------------------------------------------------------
# A BatchNorm CNN for 8x8 digits: what SRe2L / GUARD's recover stage needs (it matches BatchNorm statistics).


class SmallBNCNN(nn.Module):
    """conv-BN-ReLU-maxpool, conv-BN-ReLU, adaptive average pool to 4x4, two fully connected layers."""

    def __init__(self, num_classes: int, in_channels: int, width: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width * 16, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 4).flatten(1)
        return self.fc2(F.relu(self.fc1(out)))


@ARCHITECTURES.register("cnn-bn")
def cnn_bn(*, num_classes: int, in_channels: int, input_size: int, width: int = 32, hidden: int = 64) -> nn.Module:
    """cnn-small with BatchNorm after each conv (about 85k parameters for 1x8x8 input and 10 classes); the
    squeeze model of SRe2L / GUARD on digits, whose BatchNorm statistics the recover stage matches."""
    return SmallBNCNN(num_classes, in_channels, width, hidden)
