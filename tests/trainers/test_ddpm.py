"""The class-conditional DDPM trainer (robustdistill.trainers.ddpm): the session's tiny digits DDPM (conftest's
``tiny_ddpm``) learns (its loss falls, a digits classifier reads its samples as the digit asked for), samples
reproducibly with and without classifier-free guidance, records exactly which images it trained on, and runs,
resumes and refuses like the other trainers. Besides ``tiny_ddpm``, only tiny runs (under a second each) train here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustdistill import trainers
from robustdistill.data import DataSpec, load_split
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import load_diffusion_model
from robustdistill.models.diffusion_sampling import generate
from robustdistill.trainers.diffusion_base import STATE_FILE

RECIPE = Path(__file__).resolve().parents[2] / "defenses" / "digits-ddpm.toml"
# A run of well under a second: a narrow UNet on 5% of the train split (54 images, 4 batches an epoch, so the
# shuffled order, the optimizer, the warm-up and the EMA all carry state from one epoch to the next).
TINY = ["device=cpu", "epochs=2", "train_fraction=0.05", "channels=[8,16]", "batch_size=16"]
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
LABELS = torch.arange(10).repeat_interleave(20)  # 20 samples of each digit


def record_of(path: Path) -> dict:
    return json.loads((path / "robustdistill.json").read_text())


def unet_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / UNET_WEIGHTS))


def differing(a: Path, b: Path) -> list[str]:
    """The names of the UNet tensors that differ between two saved models (a short failure message)."""
    first, second = unet_weights(a), unet_weights(b)
    assert first.keys() == second.keys()
    return [name for name in first if not torch.equal(first[name], second[name])]


def tiny_fit(out: Path, *extra: str) -> Path:
    return trainers.create("ddpm", recipe=RECIPE, overrides=[*TINY, *extra]).fit(out)


def digits_classifier():
    """Logistic regression on the digits train split (~96% on its test split): a real classifier, in seconds."""
    from sklearn.linear_model import LogisticRegression

    train = load_split(DataSpec(), "train")
    return LogisticRegression(max_iter=2000).fit(train.x.flatten(1).numpy(), train.y.numpy())


@pytest.fixture(scope="module")
def model(tiny_ddpm: Path):
    return load_diffusion_model(tiny_ddpm)


@pytest.fixture(scope="module")
def samples(model) -> torch.Tensor:
    """20 samples of each digit, 20 DDIM steps, seed 0 (shared: sampling 200 images is the slow part here)."""
    return generate(model, LABELS, steps=20, seed=0)


# --- learning ------------------------------------------------------------------------------------------------


def test_the_training_loss_falls(tiny_ddpm: Path) -> None:
    history = record_of(tiny_ddpm)["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))
    losses = [h["train_loss"] for h in history]
    first, last = losses[0], sum(losses[-5:]) / 5
    print(f"train loss: epoch 1 {first:.4f}, mean of the last 5 epochs {last:.4f}")
    assert last < 0.5 * first, losses


def test_samples_are_the_digits_asked_for(samples: torch.Tensor) -> None:
    assert samples.dtype == torch.float32 and samples.shape == (200, 1, 8, 8)
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    predicted = torch.as_tensor(digits_classifier().predict(samples.flatten(1).numpy()))
    accuracy = float((predicted == LABELS).float().mean())
    print(f"digits classifier accuracy on the tiny DDPM's samples: {accuracy:.3f} (chance 0.1)")
    assert accuracy > 0.6, accuracy


# --- sampling --------------------------------------------------------------------------------------------------


def test_ddim_samples_depend_on_the_seed_only(model, samples: torch.Tensor) -> None:
    assert torch.equal(generate(model, LABELS, steps=20, seed=0), samples)
    assert not torch.allclose(generate(model, LABELS, steps=20, seed=1), samples, atol=1e-3)
    # The noise is drawn for all samples at once, so the batching must not matter (up to float rounding).
    few = LABELS[::10]  # 2 of each digit: batches of 7 still split it unevenly
    assert torch.allclose(generate(model, few, steps=20, seed=0, batch_size=7),
                          generate(model, few, steps=20, seed=0, batch_size=256), atol=1e-5)


def test_classifier_free_guidance(model, samples: torch.Tensor, tmp_path: Path) -> None:
    # The recipe drops one label in ten, so the null class is the embedding after the 10 digits.
    assert model.num_classes == 10 and model.null_class == 10
    guided = generate(model, LABELS, steps=20, seed=0, guidance=3.0)
    assert guided.shape == samples.shape and float(guided.min()) >= 0.0 and float(guided.max()) <= 1.0
    assert not torch.allclose(guided, samples, atol=1e-3)

    # Without dropped labels there is no unconditional model to guide away from.
    plain = load_diffusion_model(tiny_fit(tmp_path / "no-null", "epochs=1", "cond_drop=0"))
    assert plain.null_class is None and plain.num_classes == 10
    with pytest.raises(UserInputError) as caught:
        generate(plain, LABELS[:4], steps=5, guidance=2.0)
    assert caught.value.field == "guidance"
    assert generate(plain, LABELS[:4], steps=5).shape == (4, 1, 8, 8)  # unguided sampling still works


# --- provenance ------------------------------------------------------------------------------------------------


def test_provenance_names_exactly_the_images_trained_on(tmp_path: Path) -> None:
    from robustdistill.attacks.privacy.membership import from_provenance

    out = tiny_fit(tmp_path / "tenth", "epochs=1", "train_fraction=0.1", "train_subset_seed=3")
    record = record_of(out)
    full = load_split(DataSpec(), "train")
    n = round(0.1 * len(full))
    expected = full.subset(n, seed=3)
    assert record["train_members"] == [int(i) for i in expected.indices]
    assert record["data"]["fingerprint"] == full.fingerprint
    assert record["data"]["n_trained_on"] == n
    truth = from_provenance("teacher", record, "where", "fix")
    assert truth.n_members == n


# --- runs ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch tiny run, uninterrupted."""
    return tiny_fit(tmp_path_factory.mktemp("straight") / "ddpm", "epochs=3")


def test_same_seed_same_weights(straight: Path, tmp_path: Path) -> None:
    again = tiny_fit(tmp_path / "again", "epochs=3")
    other = tiny_fit(tmp_path / "other", "epochs=3", "seed=1")
    assert differing(straight, again) == []
    assert record_of(straight)["history"] == record_of(again)["history"]
    assert differing(straight, other) != []


def test_resume_reproduces_an_uninterrupted_run(straight: Path, tmp_path: Path, interrupt) -> None:
    out = tmp_path / "resumed"
    interrupt(trainers.create("ddpm", recipe=RECIPE, overrides=[*TINY, "epochs=3"]), out, after_epoch=2)
    work = out.with_name(out.name + ".partial")
    assert (work / STATE_FILE).is_file() and not out.exists()

    # Without --resume the kept run is neither continued nor thrown away.
    with pytest.raises(UserInputError) as caught:
        trainers.create("ddpm", recipe=RECIPE, overrides=[*TINY, "epochs=3"]).fit(out)
    assert caught.value.field == "--resume" and (work / STATE_FILE).is_file()

    resumed = trainers.create("ddpm", recipe=RECIPE, overrides=[*TINY, "epochs=3"]).fit(out, resume=True)
    assert not work.exists()
    assert differing(straight, resumed) == []
    assert record_of(straight)["history"] == record_of(resumed)["history"]


# --- refusals --------------------------------------------------------------------------------------------------


def test_someone_elses_folder_is_not_replaced(tmp_path: Path, plant_users_files, snapshot) -> None:
    folder = tmp_path / "mine"
    before = plant_users_files(folder, {"notes.txt": "my own notes"})
    with pytest.raises(UserInputError) as caught:
        tiny_fit(folder, "epochs=1")
    assert caught.value.field == "out"
    assert snapshot(folder) == before
    assert not folder.with_name("mine.partial").exists()


def test_only_our_own_output_is_replaced(tmp_path: Path, snapshot) -> None:
    out = tiny_fit(tmp_path / "ddpm", "epochs=1")
    assert tiny_fit(out, "epochs=1", "seed=1") == out  # a second run may replace what the first wrote
    assert record_of(out)["recipe"]["config"]["seed"] == 1
    # ... but not once a user has put a file of their own into it
    (out / "my-samples.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(UserInputError) as caught:
        tiny_fit(out, "epochs=1")
    assert caught.value.field == "out" and snapshot(out) == before


@pytest.mark.parametrize("channels", ["[12]", "[]", "[8,16,32,64,128]"])
def test_bad_channels_are_refused_by_name(channels: str) -> None:
    with pytest.raises(UserInputError) as caught:
        trainers.create("ddpm", recipe=RECIPE, overrides=["device=cpu", f"channels={channels}"])
    assert "channels" in str(caught.value)  # refused, before any training, and the message says why
    assert caught.value.field == "channels", str(caught.value)


def test_a_resume_with_other_settings_is_refused(tmp_path: Path, interrupt) -> None:
    out = tmp_path / "ddpm"
    interrupt(trainers.create("ddpm", recipe=RECIPE, overrides=TINY), out)
    with pytest.raises(UserInputError) as caught:
        trainers.create("ddpm", recipe=RECIPE, overrides=[*TINY, "lr=0.01"]).fit(out, resume=True)
    assert caught.value.field == "--resume" and "other settings" in caught.value.problem
    assert trainers.create("ddpm", recipe=RECIPE, overrides=TINY).fit(out, resume=True) == out


def test_the_cli_trains_ddpm_then_sid_and_refuses_bad_settings_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustdistill.cli import main

    sets = [arg for setting in TINY for arg in ("--set", setting)]
    assert main(["-q", "train", "ddpm", "--config", str(RECIPE), "--out", str(tmp_path / "ddpm"), *sets]) == 0
    assert "(epoch 2 kept: train loss " in capsys.readouterr().out
    sid = ["--set", f"teacher={tmp_path / 'ddpm'}", "--set", "epochs=1", "--set", "steps_per_epoch=2",
           "--set", "batch_size=4", "--set", "device=cpu"]
    assert main(["-q", "train", "sid", "--config", str(RECIPE.with_name("digits-sid.toml")), "--out",
                 str(tmp_path / "sid"), *sid]) == 0
    assert "fake score loss" in capsys.readouterr().out
    assert main(["-q", "train", "ddpm", "--config", str(RECIPE), "--out", str(tmp_path / "bad"),
                 "--set", "channels=[12]"]) == 2
    assert "channels" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("key", "value"), [("conditioning.null_class", 99), ("conditioning.classes", -1),
                                            ("one_step.t_init", 1000), ("one_step.t_init", "440")])
def test_a_hand_edited_record_that_does_not_fit_the_unet_is_refused(tmp_path: Path, key: str, value: object) -> None:
    """The sampler would index past the class embedding or the schedule: refused on load, naming the entry."""
    out = tiny_fit(tmp_path / "ddpm", "epochs=1")
    record = record_of(out)
    table, name = key.split(".")
    record.setdefault(table, {})[name] = value
    (out / "robustdistill.json").write_text(json.dumps(record))
    with pytest.raises(UserInputError) as caught:
        load_diffusion_model(out)
    assert key in caught.value.problem and "robustdistill.json" in caught.value.field
