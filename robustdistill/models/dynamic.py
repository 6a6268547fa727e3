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

What lives in this module: :class:`DynamicNetwork` (set_active, extract, reorder_channels) and the measurements
and BatchNorm recalibration of sub-networks (:func:`count_params`, :func:`count_macs`,
:func:`recalibrate_batchnorm`). The search space and :class:`SubnetConfig` are in
:mod:`robustdistill.models.search_space`, the elastic blocks in :mod:`robustdistill.models.elastic`, and the
static :class:`SubnetNetwork` (arch ``proard-subnet``) in :mod:`robustdistill.models.subnet`; their public names
are importable from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustdistill.errors import UserInputError
from robustdistill.models import size as model_size
from robustdistill.models.elastic import Bottleneck, _bn_active, _conv_active, _layout
from robustdistill.models.search_space import (  # re-exported: the names tests and benchmarks import from here
    DIMENSIONS,
    SPACES,
    SearchSpace,
    SubnetConfig,
    _subnet_from,
    space_from,
)
from robustdistill.models.subnet import SubnetNetwork, _ProARDNetwork, build_subnet

__all__ = [
    "DIMENSIONS",
    "SPACES",
    "DynamicNetwork",
    "SearchSpace",
    "SubnetConfig",
    "SubnetNetwork",
    "build_subnet",
    "count_macs",
    "count_params",
    "recalibrate_batchnorm",
    "space_from",
]

logger = logging.getLogger(__name__)


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
