"""Classifier: normalisation happens inside, on [0, 1] input; config describes the model completely."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.errors import UserInputError
from robustdistill.models import Classifier

channel_means = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=3, max_size=3)
channel_stds = st.lists(st.floats(0.05, 2.0, allow_nan=False), min_size=3, max_size=3)


@settings(max_examples=25, deadline=None)
@given(mean=channel_means, std=channel_stds, seed=st.integers(0, 2**16))
def test_normalisation_inside_equals_manual_normalisation(mean: list[float], std: list[float], seed: int) -> None:
    torch.manual_seed(0)
    model = Classifier.from_arch("cnn-tiny", num_classes=4, input_shape=(3, 8, 8), mean=mean, std=std).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.network(manual), rtol=1e-5, atol=1e-5)


def test_without_normalisation_input_reaches_network_unchanged() -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)).eval()
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x), model.network(x))


def test_gradients_flow_to_pixels() -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8), mean=[0.5], std=[0.25]).eval()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_config_is_json_and_rebuilds_the_model() -> None:
    model = Classifier.from_arch("wrn-34-10", num_classes=5, input_shape=(3, 16, 16), mean=0.5, std=0.25,
                                 classes=list("abcde"), provenance={"recipe": {"method": "kd"}}, depth=10,
                                 widen_factor=1)
    config = json.loads(json.dumps(model.config()))
    assert config == {
        "format": "robustdistill.classifier", "format_version": 1, "arch": "wrn-34-10",
        "arch_params": {"depth": 10, "widen_factor": 1}, "num_classes": 5, "classes": ["a", "b", "c", "d", "e"],
        "input_shape": [3, 16, 16], "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    rebuilt = Classifier.from_config(config)
    assert rebuilt.config() == model.config()
    assert rebuilt.network.state_dict().keys() == model.network.state_dict().keys()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "normalization.mean"),
        ({"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}, "normalization.std"),
        ({"mean": [0.5] * 3}, "normalization"),
        ({"classes": ["a"]}, "classes"),
        ({"input_shape": (3, 32)}, "input_shape"),
    ],
)
def test_bad_declarations_name_the_field(kwargs: dict, field: str) -> None:
    params = {"num_classes": 3, "input_shape": (3, 32, 32), **kwargs}
    with pytest.raises(UserInputError) as info:
        Classifier.from_arch("cnn-tiny", **params)
    assert info.value.field == field
