"""Every registered architecture builds, runs, and keeps the parameter names of the public checkpoints."""

from __future__ import annotations

import pytest
import torch

from robustdistill.errors import UserInputError
from robustdistill.models import ARCHITECTURES, build_network, infer_arch_params

# Small settings keep the forward pass fast; names and layouts are checked on the full-size networks below.
SMALL_PARAMS = {"wrn-34-10": {"depth": 10, "widen_factor": 1}}


@pytest.mark.parametrize("arch", ARCHITECTURES.available())
def test_maps_a_batch_to_logits(arch: str) -> None:
    torch.manual_seed(0)
    channels, size = (1, 8) if arch.startswith("cnn") else (3, 32)
    network = build_network(arch, 7, channels, size, **SMALL_PARAMS.get(arch, {})).eval()
    with torch.no_grad():
        logits = network(torch.rand(2, channels, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["cnn-small", "cnn-tiny"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_small_cnns_take_digits_and_cifar_sizes(arch: str, shape: tuple[int, int, int]) -> None:
    network = build_network(arch, 10, shape[0], shape[1]).eval()
    assert network(torch.rand(2, *shape)).shape == (2, 10)


def test_small_cnn_sizes_suit_teacher_and_student() -> None:
    teacher = sum(p.numel() for p in build_network("cnn-small", 10, 1, 8).parameters())
    student = sum(p.numel() for p in build_network("cnn-tiny", 10, 1, 8).parameters())
    assert 50_000 <= teacher <= 100_000
    assert 5_000 <= student <= 15_000


def test_resnet18_uses_kuangliu_names() -> None:
    state = build_network("resnet18-cifar", 10, 3, 32).state_dict()
    # kuangliu/pytorch-cifar ResNet18: 62 parameter tensors + 3 buffers for each of 20 BatchNorms.
    assert len(state) == 122
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
                "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var", "layer4.1.conv2.weight",
                "linear.weight", "linear.bias"):
        assert key in state, key
    assert "layer1.0.shortcut.0.weight" not in state  # identity shortcut in the first stage
    assert "maxpool" not in " ".join(state)
    assert tuple(state["conv1.weight"].shape) == (64, 3, 3, 3)  # 3x3 stem
    assert tuple(state["linear.weight"].shape) == (10, 512)


def test_preact_resnet18_uses_robustbench_names_and_kuangliu_variant() -> None:
    robust = build_network("preact-resnet18", 10, 3, 32).state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv2.weight", "layer2.0.shortcut.0.weight",
                "bn.weight", "bn.running_var", "linear.weight"):
        assert key in robust, key
    assert "bn1.weight" not in robust and "layer2.0.shortcut.1.weight" not in robust
    kuangliu = build_network("preact-resnet18", 10, 3, 32, bn_before_fc=False).state_dict()
    assert set(robust) - set(kuangliu) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                           "bn.num_batches_tracked"}
    assert infer_arch_params("preact-resnet18", kuangliu) == {"bn_before_fc": False}


def test_wrn_34_10_uses_robustbench_names() -> None:
    network = build_network("wrn-34-10", 10, 3, 32)
    state = network.state_dict()
    assert sum(p.numel() for p in network.parameters()) == 46_160_474  # the published WRN-34-10 size
    for key in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.conv1.weight",
                "block1.layer.0.convShortcut.weight", "block1.layer.4.conv2.weight",
                "block2.layer.0.convShortcut.weight",
                "block3.layer.4.bn2.running_mean", "bn1.weight", "fc.weight", "fc.bias"):
        assert key in state, key
    assert "block1.layer.1.convShortcut.weight" not in state
    assert "block1.layer.5.conv1.weight" not in state  # (34 - 4) / 6 = 5 blocks per stage
    assert tuple(state["fc.weight"].shape) == (10, 640)


def test_wrn_sub_block1_variant_and_inference() -> None:
    state = build_network("wrn-34-10", 10, 3, 32, depth=10, widen_factor=1, sub_block1=True).state_dict()
    assert "sub_block1.layer.0.conv1.weight" in state
    assert infer_arch_params("wrn-34-10", state)["sub_block1"] is True


def test_mobilenetv2_uses_kuangliu_names() -> None:
    state = build_network("mobilenetv2-cifar", 10, 3, 32).state_dict()
    for key in ("conv1.weight", "bn1.weight", "layers.0.conv1.weight", "layers.0.shortcut.0.weight",
                "layers.16.bn3.running_var", "conv2.weight", "bn2.weight", "linear.weight"):
        assert key in state, key
    assert "layers.17.conv1.weight" not in state  # 17 inverted-residual blocks
    assert tuple(state["conv2.weight"].shape) == (1280, 320, 1, 1)


def test_unknown_architecture_suggests_a_name() -> None:
    with pytest.raises(UserInputError, match="resnet18-cifar"):
        build_network("resnet18_cifar", 10, 3, 32)


def test_unknown_arch_param_is_named() -> None:
    with pytest.raises(UserInputError, match="arch_params.*widen"):
        build_network("resnet18-cifar", 10, 3, 32, widen=2)


@pytest.mark.parametrize("params", [{"depth": 33}, {"depth": 4}, {"widen_factor": 0}])
def test_bad_wrn_params_are_named(params: dict[str, int]) -> None:
    with pytest.raises(UserInputError, match="arch_params"):
        build_network("wrn-34-10", 10, 3, 32, **params)


def test_bad_num_classes_is_named() -> None:
    with pytest.raises(UserInputError, match="num_classes"):
        build_network("cnn-tiny", 0, 1, 8)
