"""SiD (robustdistill.trainers.sid): its two losses against hand computations, and a short real distillation of the
session's tiny digits DDPM whose one-step samples a digits classifier recognises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustdistill import trainers
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import load_diffusion_model
from robustdistill.models.one_step import one_step_generate, one_step_sample
from robustdistill.trainers.sid import fake_score_loss, sid_loss

# A short run of defenses/digits-sid.toml: ~1/4 of its steps (measured: see test_one_step_samples_are_digits).
SHORT = ["device=cpu", "epochs=2", "steps_per_epoch=50", "batch_size=32"]


def test_sid_loss_and_its_gradient_match_a_hand_computation() -> None:
    # two samples of two pixels each
    f_teacher = torch.tensor([[0.5, -0.2], [1.0, 0.0]], requires_grad=True)
    f_fake = torch.tensor([[0.1, 0.3], [0.5, 0.5]])
    x_g = torch.tensor([[0.0, 0.4], [1.0, 0.0]], requires_grad=True)  # sample 2: f_teacher == x_g, omega clamps
    alpha = 1.2
    loss = sid_loss(f_teacher, f_fake, x_g, alpha)
    # sample 1: gap = (0.4, -0.5), f_teacher - x_g = (0.5, -0.6), omega = (0.5 + 0.6) / 2 = 0.55
    #   (0.4 * (0.5 - 0.48) + -0.5 * (-0.6 + 0.6)) / 0.55 = 0.008 / 0.55
    # sample 2: gap = (0.5, -0.5), f_teacher - x_g = 0, omega = 1e-5
    #   (0.5 * (0 - 0.6) + -0.5 * (0 + 0.6)) / 1e-5 = -0.6 / 1e-5
    expected = (0.008 / 0.55 + -0.6 / 1e-5) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # omega is a constant for the gradient: dL/dx_g = -gap / omega / n; dL/df_teacher = ((f_t - x_g) + (1 - 2 alpha)
    # gap) / omega / n. A loss that differentiated through omega would give other values (sample 1's sign flips).
    assert torch.allclose(x_g.grad, torch.tensor([[-0.4 / 0.55, 0.5 / 0.55], [-0.5 / 1e-5, 0.5 / 1e-5]]) / 2, rtol=1e-5)
    d_teacher = torch.tensor([[0.5 + (1 - 2 * alpha) * 0.4, -0.6 + (1 - 2 * alpha) * -0.5],
                              [(1 - 2 * alpha) * 0.5 / 1e-5 * 0.55, (1 - 2 * alpha) * -0.5 / 1e-5 * 0.55]]) / 0.55 / 2
    assert torch.allclose(f_teacher.grad, d_teacher, rtol=1e-5)


@pytest.fixture(scope="module")
def random_ddpm(tmp_path_factory: pytest.TempPathFactory):
    from robustdistill.models.builders import build_tiny_class_unet

    return load_diffusion_model(build_tiny_class_unet(tmp_path_factory.mktemp("random") / "ddpm", num_classes=11))


def test_fake_score_loss_and_one_step_generator_match_a_hand_computation(random_ddpm) -> None:
    model = random_ddpm
    gen = torch.Generator().manual_seed(0)
    x_g = torch.randn(3, 1, 8, 8, generator=gen, requires_grad=True)
    eps = torch.randn(3, 1, 8, 8, generator=gen)
    labels, t = torch.tensor([0, 4, 9]), torch.tensor([3, 40, 90])
    loss = fake_score_loss(model, x_g, labels, t, eps)
    abar = model.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x_g.detach() + (1 - abar).sqrt() * eps
    eps_hat = model.unet(x_t, t, class_labels=labels).sample
    assert float(loss) == pytest.approx(float(((eps_hat - eps) ** 2).mean()), rel=1e-5)
    loss.backward()
    assert x_g.grad is None  # the fake-score step trains the fake score only, never the generator

    z = torch.randn(3, 1, 8, 8, generator=gen)
    t_init = 44
    abar = model.scheduler.alphas_cumprod[t_init]
    x_init = (1 - abar).sqrt() * z
    eps_hat = model.unet(x_init, torch.full((3,), t_init), class_labels=labels).sample
    by_hand = x_init / abar.sqrt() - (1 / abar - 1).sqrt() * eps_hat
    assert torch.allclose(one_step_generate(model, labels, z, t_init), by_hand, atol=1e-5)


def test_a_teacher_that_is_not_a_class_conditional_ddpm_is_refused(tmp_path: Path) -> None:
    from robustdistill.models.builders import build_tiny_text_unet

    text = build_tiny_text_unet(tmp_path / "t2i")
    trainer = trainers.create("sid", overrides=["device=cpu", f"teacher={text}"])
    with pytest.raises(UserInputError) as caught:
        trainer.fit(tmp_path / "out")
    assert caught.value.field == "teacher" and "class-conditional" in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserInputError) as caught:
        trainers.create("sid", overrides=["device=cpu", f"teacher={tmp_path / 'none'}"]).fit(tmp_path / "out")
    assert caught.value.field == "teacher"


@pytest.fixture(scope="module")
def short_sid(tiny_ddpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = Path(__file__).resolve().parents[2] / "defenses" / "digits-sid.toml"
    out = tmp_path_factory.mktemp("sid") / "generator"
    return trainers.create("sid", recipe=recipe, overrides=[*SHORT, f"teacher={tiny_ddpm}"]).fit(out)


def digits_classifier():
    """Logistic regression on the digits train split (~96% on its test split): a real classifier, in seconds."""
    from sklearn.linear_model import LogisticRegression

    from robustdistill.data import DataSpec, load_split

    train = load_split(DataSpec(), "train")
    return LogisticRegression(max_iter=2000).fit(train.x.flatten(1).numpy(), train.y.numpy())


def test_one_step_samples_are_digits(short_sid: Path, tiny_ddpm: Path) -> None:
    record = json.loads((short_sid / "robustdistill.json").read_text())
    assert record["one_step"] == {"t_init": 440}
    teacher_sha = [p["sha256"] for p in record["parents"] if p["role"] == "teacher"]
    from robustdistill.models.checkpoint import checkpoint_sha256

    assert teacher_sha == [checkpoint_sha256(tiny_ddpm)]
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert all({"fake_score_loss", "generator_loss"} <= set(h) for h in record["history"])
    generator = load_diffusion_model(short_sid)
    assert generator.one_step_t == 440 and generator.num_classes == 10 and generator.null_class == 10
    labels = torch.arange(10).repeat_interleave(30)
    z = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    images = one_step_sample(generator, labels, z)
    assert images.dtype == torch.float32 and images.shape == (300, 1, 8, 8)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    predicted = torch.as_tensor(digits_classifier().predict(images.flatten(1).numpy()))
    accuracy = float((predicted == labels).float().mean())
    assert accuracy > 0.5, accuracy  # chance is 0.1
    from robustdistill.models.diffusion_sampling import generate

    assert torch.equal(generate(generator, labels[:20], seed=1), generate(generator, labels[:20], seed=1))
    with pytest.raises(UserInputError) as caught:
        generate(generator, labels[:2], guidance=2.0)
    assert caught.value.field == "guidance" and "one-step" in caught.value.problem


def test_same_seed_same_generator(tiny_ddpm: Path, tmp_path: Path) -> None:
    tiny = ["device=cpu", "epochs=1", "steps_per_epoch=3", "batch_size=8", f"teacher={tiny_ddpm}"]
    first = trainers.create("sid", overrides=tiny).fit(tmp_path / "a")
    second = trainers.create("sid", overrides=tiny).fit(tmp_path / "b")
    other = trainers.create("sid", overrides=[*tiny, "seed=1"]).fit(tmp_path / "c")
    weights = [load_file(path / "unet" / "diffusion_pytorch_model.safetensors") for path in (first, second, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
