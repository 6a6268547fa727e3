"""The elastic (weight-sharing) blocks of ProARD's networks and the shapes a sub-network gives them.

What lives here: the per-block shapes of a sub-network (``_BlockShape``, ``_layout``), the convolution and BatchNorm
helpers that run a layer as a slice of the largest one (``_conv_active``: first channels and centre-cropped kernel;
``_bn_active``: first entries of the affine parameters and running statistics), and the two blocks, the ResNet
:class:`Bottleneck` and the MobileNetV2 :class:`InvertedResidual`, each with a static ``forward`` (plain modules)
and a ``forward_active`` (slices); the networks that stack them are in :mod:`robustdistill.models.subnet` and
:mod:`robustdistill.models.dynamic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustdistill.models.search_space import SearchSpace, SubnetConfig, make_divisible

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
