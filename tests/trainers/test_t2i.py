"""The text-to-image trainer (robustdistill.trainers.t2i): a short real run of defenses/digits-t2i.toml, trained once
for this module (~35 s on one thread), learns (its loss falls, a digits classifier reads its samples for the caption
of a digit as that digit), samples reproducibly from prompts, is read back as a text-conditioned model, and refuses
like the other diffusion trainers. Besides it, only tiny runs (about a second each) train here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustdistill import ownership, trainers
from robustdistill.data import DataSpec, load_split
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import load_diffusion_model
from robustdistill.models.diffusion_sampling import generate_from_prompts
from robustdistill.trainers.diffusion_base import STATE_FILE, is_our_output
from robustdistill.trainers.t2i import CAPTIONS, caption, prompt_table

RECIPE = Path(__file__).resolve().parents[2] / "defenses" / "digits-t2i.toml"
# The recipe's model and settings, 10 of its 15 epochs (~35 s on one thread). Measured, the 20-step samples for
# caption(d) guided with weight 2 were read as d 87% of the time (seed 0; seeds 1, 2, 3 of the run: 69%, 82%, 70%;
# unguided 54-70%); the full recipe: 98% (unguided 78%). 8 epochs were too few for a safe bound: 47-75% by seed.
SHORT = ["device=cpu", "epochs=10"]
# About a second: 5% of the train split (54 images, 2 batches an epoch), 2 epochs, a few warm-up steps.
TINY = ["device=cpu", "epochs=2", "train_fraction=0.05", "batch_size=32", "text_warmup_steps=5"]
LABELS = list(range(10)) * 20  # 20 samples of each digit
WEIGHTS = {"unet": Path("unet") / "diffusion_pytorch_model.safetensors",
           "text_encoder": Path("text_encoder") / "model.safetensors"}


def record_of(path: Path) -> dict:
    return json.loads((path / "robustdistill.json").read_text())


def differing(a: Path, b: Path) -> list[str]:
    """The names of the UNet and text-encoder tensors that differ between two saved models."""
    names = []
    for part, file in WEIGHTS.items():
        first, second = load_file(str(a / file)), load_file(str(b / file))
        assert first.keys() == second.keys()
        names += [f"{part}.{name}" for name in first if not torch.equal(first[name], second[name])]
    return names


def tiny_fit(out: Path, *extra: str) -> Path:
    return trainers.create("t2i", recipe=RECIPE, overrides=[*TINY, *extra]).fit(out)


@pytest.fixture(scope="module")
def short_t2i(tmp_path_factory: pytest.TempPathFactory) -> Path:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("t2i") / "t2i"
        return trainers.create("t2i", recipe=RECIPE, overrides=SHORT).fit(out)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_epoch_t2i(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the recipe on the whole train split (a few seconds): for what does not need a good model."""
    return trainers.create("t2i", recipe=RECIPE, overrides=["device=cpu", "epochs=1"]).fit(
        tmp_path_factory.mktemp("t2i-one") / "t2i")


@pytest.fixture(scope="module")
def model(one_epoch_t2i: Path):
    return load_diffusion_model(one_epoch_t2i)


def test_captions_are_made_from_labels() -> None:
    assert caption(3) == "a handwritten digit three"
    assert [caption(8, k) for k in range(len(CAPTIONS))] == [
        "a handwritten digit eight", "the number 8", "a picture of an eight", "a drawing of the digit eight",
        "a photo of the digit 8"]
    table = prompt_table()
    assert table[0] == "" and len(table) == len(set(table)) == 1 + 10 * len(CAPTIONS)
    for label, template in ((10, 0), (-1, 0), (3, len(CAPTIONS)), (True, 0)):
        with pytest.raises(UserInputError):
            caption(label, template)


# --- learning ------------------------------------------------------------------------------------------------


# The short run takes ~40 s: these two run with `make test-slow` (the default run keeps the test time budget).
@pytest.mark.slow
def test_the_training_loss_falls(short_t2i: Path) -> None:
    record = record_of(short_t2i)
    losses = [h["train_loss"] for h in record["history"]]
    assert [h["epoch"] for h in record["history"]] == list(range(1, 11))
    print(f"train loss: epoch 1 {losses[0]:.4f}, epoch 10 {losses[-1]:.4f}; text warm-up {record['text_warmup']}")
    assert losses[-1] < 0.5 * losses[0], losses
    assert record["text_warmup"]["accuracy"] == 1.0  # the encoder tells all 51 prompts' digits apart


@pytest.mark.slow
def test_samples_for_a_digits_caption_are_that_digit(short_t2i: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    model = load_diffusion_model(short_t2i)
    train = load_split(DataSpec(), "train")
    classifier = LogisticRegression(max_iter=2000).fit(train.x.flatten(1).numpy(), train.y.numpy())
    images = generate_from_prompts(model, [caption(d) for d in LABELS], steps=20, seed=1, guidance=2.0)
    assert images.dtype == torch.float32 and images.shape == (200, 1, 8, 8) and images.device.type == "cpu"
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    predicted = torch.as_tensor(classifier.predict(images.flatten(1).numpy()))
    accuracy = float((predicted == torch.tensor(LABELS)).float().mean())
    print(f"digits classifier accuracy on the short t2i run's guided samples of caption(d): {accuracy:.3f} "
          "(chance 0.1)")
    assert accuracy > 0.5, accuracy  # chance is 0.1; measured 0.69-0.87 over the run's seeds 0-3


# --- sampling ----------------------------------------------------------------------------------------------------


def test_same_seed_same_samples(model) -> None:
    prompts = [caption(d, d % len(CAPTIONS)) for d in range(10)] + ["", "seven"]
    first = generate_from_prompts(model, prompts, steps=5, seed=3)
    assert torch.equal(generate_from_prompts(model, prompts, steps=5, seed=3), first)
    assert torch.equal(generate_from_prompts(model, prompts, steps=5, seed=3, guidance=1.0), first)
    assert not torch.allclose(generate_from_prompts(model, prompts, steps=5, seed=4), first, atol=1e-3)
    # The noise is drawn for all prompts at once: the batching does not matter (up to float rounding), ...
    assert torch.allclose(generate_from_prompts(model, prompts, steps=5, seed=3, batch_size=5), first, atol=1e-5)
    # ... and a prompt's sample depends on its prompt, not only on its noise.
    assert not torch.allclose(generate_from_prompts(model, [prompts[0]] * 3, steps=5, seed=3)[1:],
                              first[1:3], atol=1e-3)
    guided = generate_from_prompts(model, prompts, steps=5, seed=3, guidance=3.0)
    assert guided.shape == first.shape and not torch.allclose(guided, first, atol=1e-3)
    assert generate_from_prompts(model, [], steps=5).shape == (0, 1, 8, 8)


def test_sampling_refuses_what_it_cannot_do(model, tmp_path: Path) -> None:
    from robustdistill.models.builders import build_tiny_class_unet

    for kwargs, field in (({"prompts": "the number 3"}, "prompts"), ({"prompts": ["a"], "steps": 0}, "steps"),
                          ({"prompts": ["a"], "batch_size": 0}, "batch_size")):
        with pytest.raises(UserInputError) as caught:
            generate_from_prompts(model, **kwargs)
        assert caught.value.field == field
    with pytest.raises(UserInputError) as caught:
        generate_from_prompts(load_diffusion_model(build_tiny_class_unet(tmp_path / "ddpm")), ["the number 3"])
    assert caught.value.field == "model"
    # A model recorded as trained without empty prompts has no unconditional to guide against.
    model.provenance = {**model.provenance, "recipe": {"config": {"cond_drop": 0.0}}}
    try:
        with pytest.raises(UserInputError) as caught:
            generate_from_prompts(model, ["the number 3"], steps=2, guidance=2.0)
        assert caught.value.field == "guidance"
    finally:
        model.provenance = record_of(model.path)


# --- the output --------------------------------------------------------------------------------------------------


def test_the_output_loads_as_a_text_conditioned_model(one_epoch_t2i: Path, model) -> None:
    from transformers import CLIPTextModel

    assert model.conditioning == "text" and model.null_class is None and model.num_class_embeds is None
    assert type(model.unet).__name__ == "UNet2DConditionModel" and isinstance(model.text_encoder, CLIPTextModel)
    assert model.sample_shape == (1, 8, 8) and int(model.scheduler.config.num_train_timesteps) == 1000
    states = model.encode_text(["the number 3", ""])
    assert states.shape == (2, 16, 32)
    index = json.loads((one_epoch_t2i / "model_index.json").read_text())
    assert {"unet", "scheduler", "text_encoder", "tokenizer"} <= set(index)
    record = record_of(one_epoch_t2i)
    assert record["method"] == "t2i" and record["conditioning"]["kind"] == "text"
    assert record["captions"]["templates"] == list(CAPTIONS) and record["captions"]["classes"] == 10
    assert record["train_members"] == [int(i) for i in load_split(DataSpec(), "train").indices]
    assert sorted(record["files"]) == [f for f in ownership.files_under(one_epoch_t2i) if f != "robustdistill.json"]
    assert any(f.startswith("tokenizer/") for f in record["files"]) and is_our_output(one_epoch_t2i)


# --- runs --------------------------------------------------------------------------------------------------------


def test_same_seed_same_model_and_resume(tmp_path: Path, interrupt) -> None:
    straight = tiny_fit(tmp_path / "a")
    weights = {part: load_file(str(straight / file)) for part, file in WEIGHTS.items()}
    assert tiny_fit(straight) == straight  # a second run replaces what the first wrote, with the same weights
    again = {part: load_file(str(straight / file)) for part, file in WEIGHTS.items()}
    assert all(torch.equal(tensor, again[part][name]) for part, tensors in weights.items()
               for name, tensor in tensors.items())
    assert differing(straight, tiny_fit(tmp_path / "seed1", "seed=1")) != []

    out = tmp_path / "resumed"
    interrupt(trainers.create("t2i", recipe=RECIPE, overrides=TINY), out)
    assert (out.with_name("resumed.partial") / STATE_FILE).is_file() and not out.exists()
    resumed = trainers.create("t2i", recipe=RECIPE, overrides=TINY).fit(out, resume=True)
    assert differing(straight, resumed) == []
    assert record_of(straight)["history"] == record_of(resumed)["history"]
    assert record_of(straight)["text_warmup"] == record_of(resumed)["text_warmup"]


def test_a_users_folder_is_refused(tmp_path: Path, plant_users_files, snapshot) -> None:
    folder = tmp_path / "mine"
    before = plant_users_files(folder, {"notes.txt": "my own notes"})
    with pytest.raises(UserInputError) as caught:
        tiny_fit(folder)
    assert caught.value.field == "out"
    assert snapshot(folder) == before and not folder.with_name("mine.partial").exists()
