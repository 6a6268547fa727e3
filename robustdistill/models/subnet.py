"""The static ProARD sub-network (arch ``proard-subnet``) and the module tree it shares with the dynamic network.

What lives here: ``_ProARDNetwork`` (the stem, stages of elastic blocks, optional head and classifier of one
sub-network, so that the static and the dynamic network have the same parameter names), :class:`SubnetNetwork`
(plain modules sized for one :class:`~robustdistill.models.search_space.SubnetConfig`), :func:`build_subnet` and
the ``proard-subnet`` architecture registered in ``ARCHITECTURES``; the dynamic network and its
:meth:`~robustdistill.models.dynamic.DynamicNetwork.extract` are in :mod:`robustdistill.models.dynamic`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustdistill.models.architectures import ARCHITECTURES
from robustdistill.models.elastic import Bottleneck, InvertedResidual, _conv, _layout
from robustdistill.models.search_space import SearchSpace, SubnetConfig, _subnet_from, space_from

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
