"""ProARD's dynamic network: sub-networks are exact slices of the largest one, and export, load, BatchNorm
recalibration, channel reordering and sampling behave as the trainer relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill.errors import UserInputError
from robustdistill.models import ARCHITECTURES, Classifier, build_network, load_model, save_checkpoint
from robustdistill.models.dynamic import (
    DIMENSIONS,
    SPACES,
    DynamicNetwork,
    SearchSpace,
    SubnetConfig,
    SubnetNetwork,
    build_subnet,
    count_macs,
    count_params,
    recalibrate_batchnorm,
    space_from,
)

DIGITS = ("resnet-digits", "mobilenet-digits")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _dynamic(name: str, seed: int = 0) -> DynamicNetwork:
    """A dynamic network whose BatchNorm statistics and affine parameters are not the defaults."""
    torch.manual_seed(seed)
    space = SPACES[name]
    network = DynamicNetwork(space, 10, 1, 8)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        network.train()
        for step in range(3):
            network.set_active(space.largest() if step == 0 else space.sample(generator))
            network(_images(32, seed=step))
    network.set_active(space.largest())
    return network.eval()


def _expected_slice(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """First channels along the channel dims; the centre of a conv kernel's spatial dims."""
    if full.dim() == 4:
        crop = (full.shape[-1] - shape[-1]) // 2
        return full[: shape[0], : shape[1], crop:crop + shape[2], crop:crop + shape[3]]
    if full.dim() == 2:
        return full[: shape[0], : shape[1]]
    if full.dim() == 1:
        return full[: shape[0]]
    return full


def _subnets(space: SearchSpace, count: int, seed: int = 1) -> list[SubnetConfig]:
    generator = torch.Generator().manual_seed(seed)
    return [space.smallest(), space.largest(), *(space.sample(generator) for _ in range(count))]


@pytest.mark.parametrize("name", DIGITS)
def test_extracted_subnets_are_exact_slices_with_the_same_outputs(name: str) -> None:
    network = _dynamic(name)
    space = network.space
    full = network.state_dict()
    x = _images(16, seed=5)
    for subnet in _subnets(space, 4):
        static = network.extract(subnet)
        assert type(static) is SubnetNetwork and static.subnet == subnet
        for key, tensor in static.state_dict().items():
            assert torch.equal(tensor, _expected_slice(full[key], tensor.shape)), (subnet.key(), key)
            if tensor.dim():
                assert tensor.data_ptr() != full[key].data_ptr()  # copies, not views
        # Elastic depth keeps a stage's first blocks.
        for i, depth in enumerate(subnet.depth):
            blocks = space.base_depth[i] + depth
            assert f"stages.{i}.{blocks - 1}.conv1.weight" in static.state_dict()
            assert f"stages.{i}.{blocks}.conv1.weight" not in static.state_dict()
        network.set_active(subnet)
        with torch.no_grad():
            assert torch.allclose(static.eval()(x), network(x), atol=1e-5), subnet.key()
    network.set_active(space.largest())


def test_elastic_kernel_is_the_centre_crop_and_width_the_first_channels() -> None:
    network = _dynamic("mobilenet-digits")
    space = network.space
    subnet = SubnetConfig(depth=(2, 2), width=(1.0, 1.0), expand=(3.0, 4.0), kernel=(3, 5))
    static = network.extract(subnet)
    full = network.stages[0][0].conv2.weight  # depthwise (8*6, 1, 7, 7)
    small = static.stages[0][0].conv2.weight
    assert small.shape == (space.stem_channels * 3, 1, 3, 3)
    assert torch.equal(small, full[: space.stem_channels * 3, :, 2:5, 2:5])
    assert torch.equal(static.stages[1][1].conv2.weight, network.stages[1][1].conv2.weight[:16 * 4, :, 1:6, 1:6])

    resnet = _dynamic("resnet-digits")
    subnet = SubnetConfig(depth=(0, 1), width=(0.65, 0.8), expand=(0.2, 0.25), kernel=(3, 3))
    static = resnet.extract(subnet)
    # width 0.65 of 48 -> 32 channels, expand 0.2 -> round(6.4) = 6 middle channels (divisor 2)
    assert static.stages[0][0].conv3.weight.shape == (32, 6, 1, 1)
    assert torch.equal(static.stages[0][0].bn3.running_var, resnet.stages[0][0].bn3.running_var[:32])
    assert torch.equal(static.stages[1][0].conv1.weight, resnet.stages[1][0].conv1.weight[:, :32][:20])
    assert static.linear.weight.shape == (10, 76)  # the classifier follows the last stage's width (0.8 * 96)


@pytest.mark.parametrize("name", DIGITS)
def test_training_mode_updates_land_in_the_active_slices(name: str) -> None:
    network = _dynamic(name).train()
    subnet = network.space.sample(torch.Generator().manual_seed(3))
    static = network.extract(subnet).train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    network.set_active(subnet)
    x = _images(24, seed=9)
    with torch.no_grad():
        assert torch.allclose(network(x), static(x), atol=1e-5)
    after = network.state_dict()
    for key, tensor in static.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert torch.allclose(_expected_slice(after[key], tensor.shape), tensor, atol=1e-6), key
            rest = after[key][tensor.shape[0]:]
            assert torch.equal(rest, before[key][tensor.shape[0]:]), key
    stage_blocks = {f"stages.{i}.{j}." for i, d in enumerate(subnet.depth)
                    for j in range(network.space.base_depth[i] + d, len(network.stages[i]))}
    for key in after:  # blocks beyond the active depth are untouched
        if any(key.startswith(prefix) for prefix in stage_blocks):
            assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("name", DIGITS)
def test_largest_static_network_and_dynamic_network_share_one_state_dict(name: str) -> None:
    space = SPACES[name]
    torch.manual_seed(2)
    static = build_subnet(space, space.largest(), 10, 1, 8)
    static.train()
    with torch.no_grad():
        static(_images(32))
    static.eval()
    network = DynamicNetwork(space, 10, 1, 8)
    assert {k: v.shape for k, v in network.state_dict().items()} == {k: v.shape for k, v in static.state_dict().items()}
    network.load_state_dict(static.state_dict(), strict=True)
    network.eval()
    x = _images(8, seed=4)
    with torch.no_grad():
        assert torch.allclose(network(x), static(x), atol=1e-5)
    back = build_subnet(space, space.largest(), 10, 1, 8)
    back.load_state_dict(_dynamic(name).state_dict(), strict=True)


def test_export_then_load_gives_identical_outputs(tmp_path: Path) -> None:
    network = _dynamic("resnet-digits")
    subnet = SubnetConfig(depth=(1, 0), width=(0.8, 0.65), expand=(0.35, 0.2), kernel=(3, 3))
    for index, (space_param, subnet_param) in enumerate(
        [("resnet-digits", subnet.to_dict()), (network.space.to_dict(), subnet.key())]
    ):
        model = Classifier.from_arch("proard-subnet", num_classes=10, input_shape=(1, 8, 8), mean=[0.3], std=[0.2],
                                     space=space_param, subnet=subnet_param)
        model.network.load_state_dict(network.extract(subnet).state_dict(), strict=True)
        model.eval()
        path = save_checkpoint(model, tmp_path / f"subnet{index}")
        config = json.loads((path / "config.json").read_text())
        assert config["arch"] == "proard-subnet" and config["arch_params"]["subnet"] == json.loads(
            json.dumps(subnet_param))
        loaded = load_model(path)
        assert loaded.network.subnet == subnet
        x = torch.rand(8, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
            network.set_active(subnet)
            assert torch.allclose(loaded(x), network((x - 0.3) / 0.2), atol=1e-5)
    network.set_active(network.space.largest())


def test_registered_builder_defaults_and_errors() -> None:
    assert "proard-subnet" in ARCHITECTURES.available()
    net = build_network("proard-subnet", 7, 1, 8, space="mobilenet-digits", subnet="smallest")
    assert isinstance(net, SubnetNetwork) and net.subnet == SPACES["mobilenet-digits"].smallest()
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 7)
    with pytest.raises(UserInputError, match="unknown search space"):
        build_network("proard-subnet", 10, 1, 8, space="resnet-tiny")
    with pytest.raises(UserInputError, match="subnet.width"):
        build_network("proard-subnet", 10, 1, 8, space="resnet-digits",
                      subnet={"depth": [0, 0], "width": [0.5, 1], "expand": [0.2, 0.2], "kernel": [3, 3]})


@pytest.mark.parametrize("dynamic", [False, True])
def test_recalibrate_batchnorm_sets_exact_statistics_and_nothing_else(dynamic: bool) -> None:
    network = _dynamic("resnet-digits")
    subnet = SubnetConfig(depth=(0, 1), width=(0.8, 0.65), expand=(0.25, 0.35), kernel=(3, 3))
    model: nn.Module
    if dynamic:
        network.set_active(subnet)
        model = network
    else:
        model = network.extract(subnet)
    model.eval()
    model.stages[1].train()  # a mixed training state must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(100, seed=7)  # batches of 64 and 36: a plain cumulative average would weight them wrongly
    recalibrate_batchnorm(model, x, batch_size=64)
    after = model.state_dict()

    stem = F.conv2d(x, model.conv1.weight, padding=1)
    assert torch.allclose(after["bn1.running_mean"], stem.mean(dim=(0, 2, 3)), atol=1e-5)
    parts = stem.split(64)
    var = sum(len(p) * p.var(dim=(0, 2, 3), unbiased=True) for p in parts) / len(x)  # BN keeps unbiased batch vars
    assert torch.allclose(after["bn1.running_var"], var, atol=1e-5)
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])

    active = {f"{name}.": bn.num_features for name, bn in network.extract(subnet).named_modules()
              if isinstance(bn, nn.BatchNorm2d)}
    for key, value in after.items():
        prefix, _, field = key.rpartition(".")
        if field in ("running_mean", "running_var") and f"{prefix}." in active:
            n = active[f"{prefix}."]
            assert torch.equal(value[n:], before[key][n:]), key  # inactive slices of the dynamic network kept
        else:
            assert torch.equal(value, before[key]), key  # parameters, num_batches_tracked, inactive blocks
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    if dynamic:  # the dynamic network's recalibrated slices equal those of a recalibrated extracted copy
        static = _dynamic("resnet-digits").extract(subnet)
        recalibrate_batchnorm(static, x, batch_size=64)
        for key, value in static.state_dict().items():
            assert torch.allclose(_expected_slice(after[key], value.shape), value, atol=1e-5), key


@pytest.mark.parametrize("name", DIGITS)
def test_reorder_channels_keeps_the_function_and_sorts_by_importance(name: str) -> None:
    network = _dynamic(name)
    x = _images(16, seed=11)
    with torch.no_grad():
        reference = network(x)
    smallest = network.extract(network.space.smallest()).state_dict()
    network.reorder_channels()
    with torch.no_grad():
        assert torch.allclose(network(x), reference, atol=1e-4, rtol=1e-4)
    reordered = network.extract(network.space.smallest()).state_dict()
    assert any(not torch.equal(reordered[k], smallest[k]) for k in smallest)

    def importance(weight: torch.Tensor) -> torch.Tensor:  # L1 of the weights reading each input channel
        return weight.abs().sum(dim=(0, 2, 3) if weight.dim() == 4 else 0)

    def non_increasing(values: torch.Tensor) -> bool:
        return bool((values[:-1] >= values[1:] - 1e-6).all())

    for stage in network.stages:
        for block in stage:
            assert non_increasing(importance(block.conv3.weight))
            if name.startswith("resnet"):
                assert non_increasing(importance(block.conv2.weight))
    if name.startswith("resnet"):  # stage widths: every stage's first block projects, so all are sorted
        first = importance(network.stages[0][1].conv1.weight) + importance(network.stages[0][2].conv1.weight)
        first += importance(network.stages[1][0].conv1.weight) + importance(network.stages[1][0].shortcut[0].weight)
        assert non_increasing(first)
        last = importance(network.linear.weight) + sum(importance(b.conv1.weight) for b in network.stages[1][1:])
        assert non_increasing(last)


def test_sample_is_deterministic_respects_allowed_and_covers_it() -> None:
    space = SPACES["resnet-digits"]
    draws = [space.sample(torch.Generator().manual_seed(5)) for _ in range(2)]
    assert draws[0] == draws[1]
    gen_a, gen_b = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    assert [space.sample(gen_a) for _ in range(10)] == [space.sample(gen_b) for _ in range(10)]

    allowed = {"width": [0.65, 1.0], "depth": [1, 2]}
    generator = torch.Generator().manual_seed(0)
    seen: dict[str, set] = {d: set() for d in DIMENSIONS}
    for _ in range(200):
        subnet = space.sample(generator, allowed)
        for d in DIMENSIONS:
            seen[d].update(getattr(subnet, d))
    assert seen == {"width": {0.65, 1.0}, "depth": {1, 2}, "expand": {0.35}, "kernel": {3}}
    assert space.size(allowed) == 2**2 * 2**2 and space.size() == 3**2 * 3**2 * 3**2
    everything = {space.sample(generator).key() for _ in range(400)}
    assert len(everything) > 200  # 729 configurations, drawn per stage independently
    with pytest.raises(UserInputError, match="allowed.width"):
        space.sample(generator, {"width": [0.5]})
    with pytest.raises(UserInputError, match="unknown dimensions"):
        space.sample(generator, {"widths": [1.0]})


@pytest.mark.parametrize("name", list(SPACES))
def test_keys_dicts_and_spaces_round_trip(name: str) -> None:
    space = SPACES[name]
    assert space_from(json.loads(json.dumps(space.to_dict()))) == space
    for subnet in _subnets(space, 20):
        assert SubnetConfig.parse(subnet.key(), space) == subnet
        assert SubnetConfig.from_dict(json.loads(json.dumps(subnet.to_dict()))) == subnet
    assert SubnetConfig.parse(" Largest ", space) == space.largest()
    assert SubnetConfig.parse("smallest", space) == space.smallest()


def test_key_format_and_parse_errors() -> None:
    space = SPACES["resnet-digits"]
    subnet = SubnetConfig(depth=(1, 2), width=(0.8, 1.0), expand=(0.25, 0.35), kernel=(3, 3))
    assert subnet.key() == "d1-2_w0.8-1_e0.25-0.35_k3-3"
    with pytest.raises(UserInputError, match="0.7"):
        SubnetConfig.parse("d1-2_w0.7-1_e0.25-0.35_k3-3", space)
    with pytest.raises(UserInputError, match="subnet.kernel"):
        SubnetConfig.parse("d1-2_w0.8-1_e0.25-0.35_k5-3", space)
    with pytest.raises(UserInputError, match="2 stages"):
        SubnetConfig.parse("d1_w0.8_e0.25_k3", space)
    with pytest.raises(UserInputError, match="expand"):
        SubnetConfig.parse("d1-2_w0.8-1_k3-3", space)
    with pytest.raises(UserInputError, match="cannot read"):
        SubnetConfig.parse("x1-2_w1-1", space)


def test_search_space_validation_names_the_field() -> None:
    good = SPACES["resnet-digits"].to_dict()
    for change, field in [({"stage_strides": [1]}, "space.stage_strides"), ({"family": "vit"}, "space.family"),
                          ({"kernel_choices": [4]}, "space.kernel_choices"), ({"channels": 3}, "space.channels"),
                          ({"base_depth": [0, 0], "depth_choices": [0, 1]}, "space.depth_choices")]:
        with pytest.raises(UserInputError, match=field.replace(".", r"\.")):
            SearchSpace.from_dict({**good, **change})
    with pytest.raises(UserInputError, match="space.width_choices"):
        SearchSpace.from_dict({**SPACES["mobilenet-digits"].to_dict(), "width_choices": [0.5, 1.0]})
    with pytest.raises(UserInputError, match="space.stem_channels"):
        SearchSpace.from_dict({k: v for k, v in good.items() if k != "stem_channels"})


def test_count_macs_matches_hand_computation() -> None:
    tiny = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 4*8*8 outputs x 1*3*3 = 2304
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),  # 4*4*4 outputs x 1*3*3 = 576
        nn.Flatten(),
        nn.Linear(64, 10),  # 640
    )
    assert count_macs(tiny, (1, 8, 8)) == 2304 + 576 + 640
    assert count_params(tiny) == (36 + 4) + (36 + 4) + (640 + 10)
    for name in DIGITS:
        network = _dynamic(name)
        space = network.space
        small, large = network.extract(space.smallest()), network.extract(space.largest())
        assert count_params(small) < count_params(large) == count_params(network)
        assert count_macs(small, (1, 8, 8)) < count_macs(large, (1, 8, 8))
        network.set_active(space.smallest())
        assert count_macs(network, (1, 8, 8)) == count_macs(small, (1, 8, 8))
        assert not network.training  # flags restored
    with pytest.raises(UserInputError, match="extract"):
        count_macs(nn.Sequential(network), (1, 8, 8))


def test_digits_presets_are_tiny_and_every_choice_has_its_own_size() -> None:
    for name in DIGITS:
        space = SPACES[name]
        params = count_params(build_subnet(space, space.largest(), 10, 1, 8))
        assert 40_000 <= params <= 150_000, (name, params)
        for d in ("width", "expand"):
            shapes = set()
            for value in space.choices(d):
                subnet = SubnetConfig(**{**space.largest().to_dict(), d: [value] * space.num_stages})
                shapes.add(tuple(build_subnet(space, subnet, 10, 1, 8).state_dict()["stages.0.0.conv1.weight"].shape))
            assert len(shapes) == len(space.choices(d)) or len(space.choices(d)) == 1, (name, d)
