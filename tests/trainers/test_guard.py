"""GUARD and SRe2L (squeeze, recover, relabel, student) on real digits with tiny real models: the recover stage
matches BatchNorm statistics, the relabel probabilities, the distilled dataset's round trip through the hf-disk
loader, provenance, determinism, bad input, and a whole `robustdistill train sre2l` run from the command line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustdistill import trainers
from robustdistill.cli import main
from robustdistill.data import clear_cache, load_split
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, checkpoint_sha256, load_model
from robustdistill.trainers.curvature import curvature_penalty
from robustdistill.trainers.guard import (
    GuardConfig,
    GuardTrainer,
    RecoverSettings,
    SqueezeConfig,
    SqueezeTrainer,
    bn_matching_loss,
    distilled_fingerprint,
    distilled_paths,
    recover,
    relabel,
    save_distilled_dataset,
)

TINY = {"width": 8, "hidden": 32}  # cnn-bn at about 6k parameters: trains on digits in a second
# A whole pipeline in seconds: the recipe's settings with tiny models and few iterations.
FAST = ["ipc=2", "epochs=2", "recover.iterations=15", "squeeze.epochs=2", "squeeze.arch_params={width=8, hidden=32}",
        "arch_params={width=8, hidden=32}"]


@pytest.fixture(scope="module")
def squeezed(tmp_path_factory: pytest.TempPathFactory, test_seed: int) -> Classifier:
    """A tiny BatchNorm CNN trained for 4 epochs on the real digits (about 95% test accuracy)."""
    config = SqueezeConfig(arch="cnn-bn", arch_params=TINY, epochs=4, batch_size=64, lr=0.05, lr_schedule="cosine",
                           augment="none", select_metric="last", val_robust=False, device="cpu", seed=test_seed)
    path = SqueezeTrainer(config).fit(tmp_path_factory.mktemp("squeeze") / "squeezed")
    model = load_model(path)
    assert isinstance(model, Classifier)
    return model


@pytest.fixture(scope="module")
def recovered(squeezed: Classifier):  # type: ignore[no-untyped-def]
    # r_bn weighted up from the papers' 0.01 so that 100 iterations suffice on a tiny model (with 0.01, 1000
    # iterations and the recipe's cnn-bn the loss falls about 20-fold: recorded in a digits run's distilled.json).
    settings = RecoverSettings(iterations=100, r_bn=1.0, jitter=1, classes_per_batch=10)
    return recover(squeezed, 3, settings, seed=0, progress=False)


def test_recover_moves_batchnorm_statistics_toward_the_running_stats(squeezed: Classifier, recovered) -> None:  # type: ignore[no-untyped-def]
    initial, final = torch.tensor(recovered.bn_initial), torch.tensor(recovered.bn_final)
    assert len(initial) == 2  # cnn-bn: two BatchNorm layers
    assert float(final.sum()) < 0.3 * float(initial.sum())  # well below its value at initialisation
    assert bool((final < initial).all())  # and closer in every layer
    # The recorded loss is the one measured on the saved images (groups of one image per class).
    assert torch.allclose(bn_matching_loss(squeezed, recovered.images[torch.arange(30).view(10, 3).T.flatten()], 10),
                          final, rtol=1e-4, atol=1e-6)
    assert recovered.squeezed_accuracy >= 0.9  # and they are images of their class to the squeezed model


def test_recovered_images_are_pixels_of_the_right_shape_and_counts(recovered) -> None:  # type: ignore[no-untyped-def]
    assert recovered.images.shape == (30, 1, 8, 8) and recovered.images.dtype == torch.float32
    assert float(recovered.images.min()) >= 0.0 and float(recovered.images.max()) <= 1.0
    assert torch.equal(torch.bincount(recovered.labels, minlength=10), torch.full((10,), 3))
    assert torch.equal(recovered.labels, torch.arange(10).repeat_interleave(3))  # class-major


def test_same_seed_same_images_other_seed_other_images(squeezed: Classifier) -> None:
    settings = RecoverSettings(iterations=10, jitter=1, classes_per_batch=10, parallel=1)
    one = recover(squeezed, 2, settings, seed=5, progress=False).images
    two = recover(squeezed, 2, settings, seed=5, progress=False).images
    assert torch.equal(one, two)
    assert not torch.equal(one, recover(squeezed, 2, settings, seed=6, progress=False).images)
    # Optimising the batches side by side is the same as one after another (each has its own statistics).
    together = recover(squeezed, 2, RecoverSettings(iterations=10, jitter=1, classes_per_batch=10, parallel=2),
                       seed=5, progress=False).images
    assert torch.allclose(one, together, atol=1e-5)


def test_relabel_gives_softer_probability_distributions_at_t20(squeezed: Classifier, recovered) -> None:  # type: ignore[no-untyped-def]
    soft = relabel(squeezed, recovered.images, temperature=20.0)
    hard = relabel(squeezed, recovered.images, temperature=1.0)
    assert soft.shape == (30, 10) and bool((soft >= 0).all())
    assert torch.allclose(soft.sum(1), torch.ones(30), atol=1e-5)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(1)

    assert bool((entropy(soft) > entropy(hard)).all()) and bool((soft.max(1).values < hard.max(1).values).all())
    assert torch.equal(soft.argmax(1), hard.argmax(1))  # a temperature never changes the ranking


def test_distilled_dataset_round_trips_through_the_hf_disk_loader(tmp_path: Path, squeezed: Classifier, recovered) -> None:  # type: ignore[no-untyped-def]
    soft = relabel(squeezed, recovered.images)
    val, test = load_split({"kind": "digits"}, "val"), load_split({"kind": "digits"}, "test")
    root = save_distilled_dataset(tmp_path / "dataset", recovered.images, recovered.labels, soft, val.classes, val, test)
    clear_cache()
    spec = {"kind": "hf-disk", "root": str(root)}
    train = load_split(spec, "train")
    assert train.input_shape == (1, 8, 8) and train.classes == val.classes  # greyscale 8x8, class names kept
    assert torch.equal(train.x, recovered.images) and torch.equal(train.y, recovered.labels)  # exact: float32 stored
    assert torch.equal(load_split(spec, "val").x, val.x) and torch.equal(load_split(spec, "test").y, test.y)
    from datasets import load_from_disk

    stored = load_from_disk(str(root))["train"]
    assert torch.allclose(torch.tensor(stored["soft_label"]), soft)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left behind


def test_fingerprint_changes_with_the_images_and_the_labels(recovered) -> None:  # type: ignore[no-untyped-def]
    base = distilled_fingerprint(recovered.images, recovered.labels)
    assert base == distilled_fingerprint(recovered.images.clone(), recovered.labels.clone())
    pixel = recovered.images.clone()
    pixel[0, 0, 0, 0] = 1.0 - pixel[0, 0, 0, 0]
    labels = recovered.labels.clone()
    labels[0] = 9
    assert len({base, distilled_fingerprint(pixel, recovered.labels), distilled_fingerprint(recovered.images, labels)}) == 3


@pytest.mark.parametrize(
    ("method", "override", "field"),
    [
        ("guard", "ipc=0", "ipc"),
        ("sre2l", "ipc=-3", "ipc"),
        ("guard", "curvature='cure'", "curvature"),
        ("sre2l", "curvature='double-backprop'", "curvature"),
        ("guard", "recover.iterations=0", "recover.iterations"),
        ("guard", "squeeze.lr=0", "squeeze.lr"),
    ],
)
def test_bad_settings_name_the_field(method: str, override: str, field: str) -> None:
    with pytest.raises(UserInputError) as caught:
        trainers.create(method, recipe=f"defenses/digits-{method}.toml", overrides=[override])
    assert str(caught.value).startswith(field), str(caught.value)
    assert caught.value.fix


def test_a_squeeze_arch_without_batchnorm_is_refused_before_anything_is_written(tmp_path: Path, squeezed: Classifier) -> None:
    trainer = trainers.create("sre2l", recipe="defenses/digits-sre2l.toml", overrides=["squeeze.arch=cnn-small"])
    with pytest.raises(UserInputError) as caught:
        trainer.fit(tmp_path / "student")
    assert str(caught.value).startswith("squeeze.arch") and "cnn-bn" in str(caught.value)
    assert not list(tmp_path.iterdir())
    plain = Classifier.from_arch("cnn-small", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(UserInputError, match="BatchNorm"):
        recover(plain, 1, RecoverSettings(iterations=1))
    with pytest.raises(UserInputError) as caught:
        GuardTrainer(GuardConfig(ipc=0))
    assert caught.value.field == "ipc"


def test_cli_train_sre2l_end_to_end_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "sre2l"
    code = main(["-q", "train", "sre2l", "--config", "defenses/digits-sre2l.toml", "--out", str(out),
                 *[arg for item in FAST for arg in ("--set", item)]])
    assert code == 0
    paths = distilled_paths(out)
    for path in (out / "config.json", paths["squeezed"] / "config.json", paths["dataset"] / "dataset_dict.json",
                 paths["grid"], paths["manifest"], tmp_path / "sre2l.training.html"):
        assert path.is_file(), path
    from PIL import Image

    with Image.open(paths["grid"]) as grid:
        assert grid.height > grid.width / 2  # one row per class (10 rows), ipc = 2 columns
    manifest = json.loads(paths["manifest"].read_text())
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    clear_cache()
    synthetic = load_split({"kind": "hf-disk", "root": str(paths["dataset"])}, "train")
    assert provenance["distilled"]["fingerprint"] == manifest["fingerprint"] == distilled_fingerprint(synthetic.x, synthetic.y)
    assert provenance["data"] == {"spec": {"kind": "hf-disk", "root": str(paths["dataset"])},
                                  "fingerprint": synthetic.fingerprint, "split": "train", "n_trained_on": 20}
    assert provenance["parents"] == [{"role": "squeezed", "path": str(paths["squeezed"]),
                                      "sha256": checkpoint_sha256(paths["squeezed"])}]
    assert provenance["distilled"]["ipc"] == 2 and provenance["distilled"]["curvature"]["kind"] == "none"
    assert provenance["distilled"]["real_data"]["fingerprint"] == load_split({"kind": "digits"}, "train").fingerprint
    assert provenance["recipe"]["method"] == "sre2l" and len(provenance["history"]) == 2
    assert not list(tmp_path.glob("*.partial")) and not list(paths["root"].glob(".*tmp"))


def test_guard_records_curvature_and_other_data_gives_another_fingerprint(tmp_path: Path) -> None:
    first = trainers.create("guard", recipe="defenses/digits-guard.toml", overrides=[*FAST, "squeeze.epochs=1"])
    first.fit(tmp_path / "a")
    squeeze = json.loads((distilled_paths(tmp_path / "a")["squeezed"] / "config.json").read_text())["provenance"]
    assert "curvature_penalty" in squeeze["history"][0] and squeeze["recipe"]["config"]["curvature"] == "double-backprop"
    prov_a = json.loads((tmp_path / "a" / "config.json").read_text())["provenance"]
    assert prov_a["distilled"]["curvature"] == {"kind": "double-backprop", "weight": 3.0, "h": 0.25}
    # The same squeezed model (reused, not retrained), another seed: other images, another fingerprint.
    given = distilled_paths(tmp_path / "a")["squeezed"]
    second = trainers.create("guard", recipe="defenses/digits-guard.toml",
                             overrides=[*FAST, f"squeeze_checkpoint='{given}'", "seed=1"])
    second.fit(tmp_path / "b")
    prov_b = json.loads((tmp_path / "b" / "config.json").read_text())["provenance"]
    assert prov_b["parents"][0]["sha256"] == prov_a["parents"][0]["sha256"]
    assert prov_b["distilled"]["fingerprint"] != prov_a["distilled"]["fingerprint"]
    assert prov_b["distilled"]["curvature"]["kind"] == "double-backprop"
    assert not distilled_paths(tmp_path / "b")["squeezed"].exists()
    # An SRe2L run cannot pass off a curvature-regularised squeeze as its own.
    with pytest.raises(UserInputError, match="squeeze_checkpoint"):
        trainers.create("sre2l", recipe="defenses/digits-sre2l.toml",
                        overrides=[*FAST, f"squeeze_checkpoint='{given}'"]).fit(tmp_path / "c")


def test_interrupted_student_resumes_and_reuses_the_distilled_data(tmp_path: Path) -> None:
    out = tmp_path / "s"
    overrides = [*FAST, "epochs=3"]

    def stop(epoch: int, record: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainers.create("sre2l", recipe="defenses/digits-sre2l.toml", overrides=overrides).fit(out, on_epoch_end=stop)
    paths = distilled_paths(out)
    assert not out.exists() and (tmp_path / "s.partial").is_dir() and paths["manifest"].is_file()
    with pytest.raises(UserInputError, match="--resume"):
        trainers.create("sre2l", recipe="defenses/digits-sre2l.toml", overrides=overrides).fit(out)
    stamp = paths["manifest"].stat().st_mtime_ns, (paths["squeezed"] / "model.safetensors").stat().st_mtime_ns
    trainers.create("sre2l", recipe="defenses/digits-sre2l.toml", overrides=overrides).fit(out, resume=True)
    assert (paths["manifest"].stat().st_mtime_ns, (paths["squeezed"] / "model.safetensors").stat().st_mtime_ns) == stamp
    resumed = load_model(out)
    trainers.create("sre2l", recipe="defenses/digits-sre2l.toml", overrides=overrides).fit(tmp_path / "straight")
    straight = load_model(tmp_path / "straight")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_squeeze_loss_is_cross_entropy_plus_the_penalty_computed_in_eval_mode(squeezed: Classifier) -> None:
    # As in the official pretrain_cifar.py: cross-entropy in train mode, the regulariser with BatchNorm in eval mode, so
    # the perturbed inputs x + z use the running statistics and never enter them.
    config = SqueezeConfig(arch="cnn-bn", arch_params=TINY, curvature="double-backprop", curvature_weight=3.0,
                           curvature_h=0.25, device="cpu")
    data = load_split({"kind": "digits"}, "val")
    x, y = data.x[:32], data.y[:32]
    model, reference = copy.deepcopy(squeezed).train(), copy.deepcopy(squeezed).train()
    loss, _ = SqueezeTrainer(config).batch_loss(model, x, y, torch.Generator().manual_seed(0))
    assert model.training
    ce = nn.functional.cross_entropy(reference(x), y)  # one train-mode pass: the only update of the running statistics
    reference.eval()
    penalty = curvature_penalty(lambda u: nn.functional.cross_entropy(reference.network(u), y, reduction="none"),
                                reference.normalize(x), h=0.25, weight=3.0)
    assert float(penalty.detach()) > 0
    assert float(loss.detach()) == pytest.approx(float((ce + penalty).detach()), rel=1e-5)
    for mine, theirs in zip(model.buffers(), reference.buffers(), strict=True):
        assert torch.equal(mine, theirs)
