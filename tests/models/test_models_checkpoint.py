"""Checkpoint save/load: exact round trips, atomic writes, plain state dicts, and refusal to unpickle."""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, checkpoint_sha256, load_model, save_checkpoint
from robustdistill.models.checkpoint import _safetensors_ready


def _trained_bn_model(arch: str = "wrn-34-10", **params) -> Classifier:
    """A model whose BatchNorm statistics are not the defaults, so a round trip must carry buffers too."""
    torch.manual_seed(0)
    if arch == "wrn-34-10" and not params:
        params = {"depth": 10, "widen_factor": 1}
    model = Classifier.from_arch(arch, num_classes=10, input_shape=(3, 32, 32), mean=[0.49, 0.48, 0.45],
                                 std=[0.25, 0.24, 0.26], **params)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


def _logits(model: torch.nn.Module, seed: int = 1, shape: tuple[int, ...] = (4, 3, 32, 32)) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.rand(*shape, generator=torch.Generator().manual_seed(seed)))


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    model = _trained_bn_model()
    provenance = {"recipe": {"method": "kd", "config": {"epochs": 1}},
                  "parents": [{"role": "teacher", "path": "t", "sha256": "0" * 64}],
                  "data": {"spec": "digits", "fingerprint": "abc"}, "train_members": [0, 2, 5],
                  "metrics": {"clean_accuracy": 0.9}}
    out = save_checkpoint(model, tmp_path / "ckpt", provenance=provenance)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "robustdistill.classifier" and config["format_version"] == 1
    assert config["normalization"] == {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    assert config["provenance"]["train_members"] == [0, 2, 5]
    assert {"created", "robustdistill_version"} <= set(config["provenance"])

    loaded = load_model(out)
    assert isinstance(loaded, Classifier) and not loaded.training
    assert loaded.config() == model.config()
    assert loaded.provenance["recipe"] == provenance["recipe"]
    assert torch.equal(_logits(loaded), _logits(model))


def test_saving_replaces_an_older_checkpoint(tmp_path: Path) -> None:
    first = save_checkpoint(Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)), tmp_path / "c")
    torch.manual_seed(5)
    second = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)).eval()
    save_checkpoint(second, first)
    assert torch.equal(_logits(load_model(first), shape=(2, 1, 8, 8)), _logits(second, shape=(2, 1, 8, 8)))
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary directories left


def test_failed_save_leaves_no_checkpoint_and_keeps_the_old_one(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8))
    existing = save_checkpoint(model, tmp_path / "old")
    before = checkpoint_sha256(existing)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, existing)
    assert not (tmp_path / "new").exists()
    assert checkpoint_sha256(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("precious")
    with pytest.raises(UserInputError, match="not a model directory"):
        save_checkpoint(Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)), tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "precious"


def test_provenance_must_be_json(tmp_path: Path) -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8))
    with pytest.raises(UserInputError, match="provenance"):
        save_checkpoint(model, tmp_path / "c", provenance={"when": object()})
    assert not (tmp_path / "c").exists()


def test_shared_and_strided_tensors_are_saved_independently(tmp_path: Path) -> None:
    base = torch.arange(12.0).view(3, 4)
    tensors = _safetensors_ready({"a": base, "b": base, "t": base.t(), "row": base[1]})
    save_file(tensors, str(tmp_path / "x.safetensors"))
    assert torch.equal(tensors["t"], base.t()) and torch.equal(tensors["row"], base[1])


def test_non_contiguous_weights_round_trip(tmp_path: Path) -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        model.network.fc2.weight.data = model.network.fc2.weight.data.t().contiguous().t()
    assert not model.network.fc2.weight.is_contiguous()
    loaded = load_model(save_checkpoint(model, tmp_path / "c"))
    assert torch.equal(loaded.network.fc2.weight, model.network.fc2.weight)
    # A strided weight takes another matmul path, so outputs agree to rounding rather than bit for bit.
    torch.testing.assert_close(_logits(loaded, shape=(2, 1, 8, 8)), _logits(model, shape=(2, 1, 8, 8)))


def test_sha256_is_stable_and_tracks_weights(tmp_path: Path) -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8))
    out = save_checkpoint(model, tmp_path / "c", provenance={"created": "fixed"})
    digest = checkpoint_sha256(out)
    assert digest == checkpoint_sha256(out) and len(digest) == 64
    with torch.no_grad():
        model.network.fc2.bias.add_(1.0)
    save_checkpoint(model, out, provenance={"created": "fixed"})
    assert checkpoint_sha256(out) != digest
    assert checkpoint_sha256(out / "model.safetensors") != checkpoint_sha256(out)


# --------------------------------------------------------------------------------------------------------------
# Plain state dicts, as users bring them.


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"net": sd, "acc": 94.1, "epoch": 199},  # kuangliu/pytorch-cifar's own checkpoint layout
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"lr": 0.1}},
        lambda sd: {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "state_dict+module", "net", "model_state_dict", "model+compiled"],
)
def test_plain_state_dict_round_trip(tmp_path: Path, wrap) -> None:
    model = _trained_bn_model()
    path = tmp_path / "weights.pt"
    torch.save(wrap(model.network.state_dict()), path)
    loaded = load_model(path, arch="wrn-34-10", depth=10, widen_factor=1, mean=model.mean, std=model.std)
    assert isinstance(loaded, Classifier) and not loaded.training
    assert loaded.num_classes == 10 and loaded.input_shape == (3, 32, 32)
    assert torch.equal(_logits(loaded), _logits(model))


def test_safetensors_file_with_arch(tmp_path: Path) -> None:
    model = _trained_bn_model("resnet18-cifar")
    path = tmp_path / "resnet.safetensors"
    save_file(_safetensors_ready(model.network.state_dict()), str(path))
    loaded = load_model(path, arch="resnet18-cifar", mean=model.mean, std=model.std)
    assert torch.equal(_logits(loaded, shape=(2, 3, 32, 32)), _logits(model, shape=(2, 3, 32, 32)))


def test_state_dict_variants_are_inferred(tmp_path: Path) -> None:
    kuangliu_preact = Classifier.from_arch("preact-resnet18", num_classes=100, input_shape=(3, 32, 32),
                                           bn_before_fc=False).eval()
    torch.save(kuangliu_preact.network.state_dict(), tmp_path / "p.pth")
    loaded = load_model(tmp_path / "p.pth", arch="preact-resnet18")
    assert loaded.num_classes == 100 and loaded.arch_params == {"bn_before_fc": False}
    assert torch.equal(_logits(loaded, shape=(2, 3, 32, 32)), _logits(kuangliu_preact, shape=(2, 3, 32, 32)))

    trades_wrn = _trained_bn_model("wrn-34-10", depth=10, widen_factor=2, sub_block1=True)
    torch.save(trades_wrn.network.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch="wrn-34-10", depth=10, widen_factor=2,
                        mean=trades_wrn.mean, std=trades_wrn.std)
    assert loaded.arch_params["sub_block1"] is True
    assert torch.equal(_logits(loaded), _logits(trades_wrn))


def test_digits_sized_state_dict_takes_input_shape(tmp_path: Path) -> None:
    model = Classifier.from_arch("cnn-small", num_classes=10, input_shape=(1, 8, 8)).eval()
    torch.save(model.network.state_dict(), tmp_path / "cnn.bin")
    loaded = load_model(tmp_path / "cnn.bin", arch="cnn-small", input_shape=(1, 8, 8))
    assert loaded.input_shape == (1, 8, 8)
    assert torch.equal(_logits(loaded, shape=(3, 1, 8, 8)), _logits(model, shape=(3, 1, 8, 8)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to write a GPU state dict")
def test_gpu_state_dict_loads_on_cpu(tmp_path: Path) -> None:
    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)).eval()
    torch.save({"module." + k: v.cuda() for k, v in model.network.state_dict().items()}, tmp_path / "gpu.pt")
    loaded = load_model(tmp_path / "gpu.pt", arch="cnn-tiny", input_shape=(1, 8, 8))
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(_logits(loaded, shape=(2, 1, 8, 8)), _logits(model, shape=(2, 1, 8, 8)))


# --------------------------------------------------------------------------------------------------------------
# Security: loading must never execute what a file contains.


class _OpensAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _RunsAShellCommand:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    torch.save(Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)).network, tmp_path / "m.pt")
    with pytest.raises(UserInputError, match="pickled Python objects") as info:
        load_model(tmp_path / "m.pt", arch="cnn-tiny")
    assert "state_dict()" in str(info.value)


@pytest.mark.parametrize("payload", [_OpensAFile, _RunsAShellCommand])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_malicious_pickle_is_not_executed(tmp_path: Path, payload, writer: str) -> None:
    victim = tmp_path / "pwned"
    evil = {"conv1.weight": torch.zeros(1), "x": payload(str(victim))}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    with pytest.raises(UserInputError, match="will not unpickle"):
        load_model(path, arch="cnn-tiny")
    assert not victim.exists()


# --------------------------------------------------------------------------------------------------------------
# Errors name the field and the fix.


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no such file") as info:
        load_model(tmp_path / "nope" / "model.pt")
    assert info.value.field == "model"


def test_hub_name_is_not_downloaded() -> None:
    with pytest.raises(UserInputError, match="no such file or directory: google/vit") as info:
        load_model("google/vit-base-patch16-224")
    assert "never downloads" in (info.value.fix or "") and "local" in (info.value.fix or "")


def test_missing_local_path_says_no_such_file_before_any_hub_hint() -> None:
    # checkpoints/digits-kd has the shape of a Hub name: the message must still say the path does not exist.
    with pytest.raises(UserInputError) as info:
        load_model("checkpoints/no-such-checkpoint-here")
    assert info.value.problem == "no such file or directory: checkpoints/no-such-checkpoint-here"


def test_state_dict_without_arch(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(UserInputError, match="--arch") as info:
        load_model(tmp_path / "w.pt")
    assert info.value.field == "arch"


def test_mismatched_keys_are_listed(tmp_path: Path) -> None:
    state = Classifier.from_arch("resnet18-cifar", num_classes=10, input_shape=(3, 32, 32)).network.state_dict()
    state["extra.weight"] = state.pop("linear.weight")
    torch.save(state, tmp_path / "r.pt")
    with pytest.raises(UserInputError) as info:
        load_model(tmp_path / "r.pt", arch="resnet18-cifar")
    message = str(info.value)
    assert "missing 1 keys (linear.weight)" in message and "unexpected 1 keys (extra.weight)" in message
    assert "arch=" in message
    with pytest.raises(UserInputError, match="missing .* keys"):
        load_model(tmp_path / "r.pt", arch="preact-resnet18")


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    torch.save(Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)).network.state_dict(),
               tmp_path / "t.pt")
    with pytest.raises(UserInputError, match="fc2.weight"):
        load_model(tmp_path / "t.pt", arch="cnn-tiny", num_classes=5, input_shape=(1, 8, 8))


@pytest.mark.parametrize("content", [b"not a torch file", b""])
def test_unreadable_state_dict_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(UserInputError, match="bad.pt"):
        load_model(tmp_path / "bad.pt", arch="cnn-tiny")


def test_non_state_dict_contents(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "meta.pt")
    with pytest.raises(UserInputError, match="top-level keys: acc, epoch"):
        load_model(tmp_path / "meta.pt", arch="cnn-tiny")


def test_unknown_file_type_and_bare_directory(tmp_path: Path) -> None:
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    with pytest.raises(UserInputError, match="unknown file type"):
        load_model(tmp_path / "weights.h5", arch="cnn-tiny")
    with pytest.raises(UserInputError, match="no config.json"):
        load_model(tmp_path)


def test_damaged_checkpoint(tmp_path: Path) -> None:
    out = save_checkpoint(Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8)), tmp_path / "c")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="safetensors"):
        load_model(out)
    (out / "config.json").write_text("{")
    with pytest.raises(UserInputError, match="config.json"):
        load_model(out)
