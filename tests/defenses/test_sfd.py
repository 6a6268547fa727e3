"""SFD (robustdistill.defenses.sfd): its loss against a hand computation, what each term asks the networks about, its
refusals, and a short real run on the session's tiny digits DDPM that forgets a class and keeps the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill import trainers
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import load_diffusion_model
from robustdistill.models.one_step import denoised, one_step_generate
from robustdistill.trainers.sid import copy_of


@pytest.fixture(scope="module")
def random_ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robustdistill.models.builders import build_tiny_class_unet

    return build_tiny_class_unet(tmp_path_factory.mktemp("random") / "ddpm", num_classes=10)


def prepared(teacher: Path, *overrides: str):
    trainer = trainers.create("sfd", overrides=["device=cpu", f"teacher={teacher}", "batch_size=3", "t_min=4",
                                                "t_init=44", "t_max=71", *overrides])
    return trainer, trainer.prepare()


def test_each_term_asks_teacher_and_fake_score_about_the_right_classes(random_ddpm: Path) -> None:
    trainer, _ = prepared(random_ddpm, "forget_class=4", "override_class=7", "batch_size=400")
    draw = torch.Generator().manual_seed(0)
    (w_remain, remain), (w_forget, forget) = trainer.terms("generator", 400, draw)
    assert (w_remain, w_forget) == (1.0, 0.01)  # the paper's weights by default
    assert 4 not in remain.generator.tolist() and set(remain.generator.tolist()) == set(range(10)) - {4}
    assert torch.equal(remain.generator, remain.teacher) and torch.equal(remain.generator, remain.fake)
    # the forgotten class: generated as 4, the fake score asked about 4, the teacher about the override class
    assert set(forget.generator.tolist()) == set(forget.fake.tolist()) == {4}
    assert set(forget.teacher.tolist()) == {7}
    # the fake score's update asks about the class generated, the forgotten one included
    (_, fake_remain), (_, fake_forget) = trainer.terms("fake", 400, draw)
    assert set(fake_forget.teacher.tolist()) == set(fake_forget.fake.tolist()) == {4}
    # random override: a remaining class per sample, never the forgotten one
    trainer, _ = prepared(random_ddpm, "forget_class=4", "override_class=-1")
    (_, forget) = trainer.terms("generator", 400, draw)[1]
    assert 4 not in forget.teacher.tolist() and len(set(forget.teacher.tolist())) == 9


def test_the_generator_loss_matches_a_hand_computation(random_ddpm: Path) -> None:
    alpha, w_r, w_f = 1.2, 1.0, 0.5
    trainer, teacher = prepared(random_ddpm, "forget_class=2", "override_class=5", f"forget_weight={w_f}",
                                f"alpha={alpha}")
    networks = {"teacher": teacher, "fake": copy_of(teacher), "generator": copy_of(teacher)}
    with torch.no_grad():  # make the three networks differ, as they do after a few steps
        for p in networks["fake"].unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for p in networks["generator"].unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss = trainer.loss("generator", networks, torch.Generator().manual_seed(3))

    # the same draws, in the trainer's order: both terms' labels, then (z, t, eps) per term
    draw = torch.Generator().manual_seed(3)
    remaining = torch.tensor([0, 1, 3, 4, 5, 6, 7, 8, 9])
    labels = remaining[torch.randint(0, 9, (3,), generator=draw)]
    cfg = trainer.config
    by_hand = 0.0
    for weight, generated, asked_teacher in ((w_r, labels, labels), (w_f, torch.full((3,), 2), torch.full((3,), 5))):
        z = torch.randn(3, 1, 8, 8, generator=draw)
        t = torch.randint(cfg.t_min, cfg.t_max, (3,), generator=draw)
        eps = torch.randn(3, 1, 8, 8, generator=draw)
        x_g = one_step_generate(networks["generator"], generated, z, cfg.t_init)
        abar = teacher.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        x_t = abar.sqrt() * x_g + (1 - abar).sqrt() * eps
        f_t = denoised(teacher, x_t, t, asked_teacher)
        f_f = denoised(networks["fake"], x_t, t, generated)
        for i in range(3):  # per sample: sum over pixels of gap * ((f_t - x_g) - alpha gap) / mean |f_t - x_g|
            gap = f_t[i] - f_f[i]
            omega = max(float((f_t[i] - x_g[i]).abs().mean().detach()), 1e-5)
            by_hand += weight * float((gap * ((f_t[i] - x_g[i]) - alpha * gap)).sum().detach()) / omega / 3
    assert float(loss.detach()) == pytest.approx(by_hand, rel=1e-4)


@pytest.mark.parametrize(("overrides", "field"), [
    (["forget_class=3", "override_class=3"], "override_class"),
    (["forget_weight=0", "fake_forget_weight=0"], "forget_weight"),
    (["remain_weight=0"], "remain_weight"),
    (["forget_class=10"], "forget_class"),
    (["override_class=12"], "override_class"),
    (["generator_recipe=defenses/digits-sid.toml"], "generator_recipe"),
])
def test_bad_settings_are_refused_naming_the_field(random_ddpm: Path, overrides: list[str], field: str) -> None:
    with pytest.raises(UserInputError) as caught:
        prepared(random_ddpm, *overrides)
    assert caught.value.field == field


def test_a_stage_one_generator_of_another_teacher_is_refused(random_ddpm: Path, tmp_path: Path) -> None:
    from robustdistill.models.builders import build_tiny_class_unet

    other = build_tiny_class_unet(tmp_path / "other", num_classes=10, seed=1)
    with pytest.raises(UserInputError) as caught:  # a DDPM, not a one-step generator
        prepared(random_ddpm, f"generator={other}")
    assert caught.value.field == "generator" and "not a one-step generator" in caught.value.problem


def read_digits(images: torch.Tensor) -> torch.Tensor:
    from tests.trainers.test_sid import digits_classifier

    return torch.as_tensor(digits_classifier().predict(images.flatten(1).numpy()))


def test_sfd_forgets_the_class_and_keeps_the_others(tiny_sfd: Path, tiny_ddpm: Path) -> None:
    from robustdistill.models.diffusion_sampling import generate

    record = json.loads((tiny_sfd / "robustdistill.json").read_text())
    assert record["method"] == "sfd" and record["data"] is None and record["train_members"] == []  # data-free
    assert record["unlearning"]["forget_class"] == 0 and record["unlearning"]["override_class"] == 1
    assert record["unlearning"]["remaining_classes"] == list(range(1, 10)) and record["unlearning"]["stages"] == 1
    labels = torch.arange(10).repeat_interleave(30)
    forgotten = labels == 0
    before = read_digits(generate(load_diffusion_model(tiny_ddpm), labels, steps=20, seed=1))
    after = read_digits(generate(load_diffusion_model(tiny_sfd), labels, steps=1, seed=1))
    forget_before = float((before[forgotten] == 0).float().mean())
    forget_after = float((after[forgotten] == 0).float().mean())
    retain_before = float((before[~forgotten] == labels[~forgotten]).float().mean())
    retain_after = float((after[~forgotten] == labels[~forgotten]).float().mean())
    print(f"forget {forget_before:.3f} -> {forget_after:.3f}, retain {retain_before:.3f} -> {retain_after:.3f}")
    assert forget_before > 0.7
    assert forget_after < 0.25  # well below the teacher's (measured: 0.93 -> 0.13 after these 100 steps)
    assert retain_after > retain_before - 0.25  # the stated margin for a run of 100 steps


def test_the_two_stage_variant_starts_from_the_sid_generator_of_its_teacher(random_ddpm: Path, tmp_path: Path) -> None:
    short = ["device=cpu", "epochs=1", "steps_per_epoch=2", "batch_size=4", "t_min=4", "t_init=44", "t_max=71"]
    stage_one = trainers.create("sid", overrides=[*short, f"teacher={random_ddpm}"]).fit(tmp_path / "sid")
    trainer, teacher = prepared(random_ddpm, f"generator={stage_one}")
    start = trainer.start_generator(teacher).unet.state_dict()
    sid = load_diffusion_model(stage_one).unet.state_dict()
    assert all(torch.equal(start[k], sid[k]) for k in sid)
    assert not all(torch.equal(start[k], v) for k, v in teacher.unet.state_dict().items())  # not the teacher's
    out = trainers.create("sfd", overrides=[*short, f"teacher={random_ddpm}", f"generator={stage_one}"]).fit(
        tmp_path / "sfd")
    record = json.loads((out / "robustdistill.json").read_text())
    assert record["unlearning"]["stages"] == 2
    assert [p["role"] for p in record["parents"]] == ["teacher", "stage-1 generator"]
    # stage 1 at another t_init is refused, naming the field to change
    with pytest.raises(UserInputError) as caught:
        prepared(random_ddpm, f"generator={stage_one}", "t_init=40")
    assert caught.value.field == "t_init"
