"""ARD, RSLAD, AdaAD (and MTARD end to end): the shared KL and inner maximisation by hand, and a real digits run in
which every method's student beats a plain KD student of the same teacher under PGD. Each method's loss on one batch
against a hand computation: tests/trainers/test_batch_losses.py."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from robustdistill import attacks, load_model, trainers
from robustdistill.data import load_split
from robustdistill.trainers.adversarial import attack_start, maximise, teacher_student_kl
from robustdistill.trainers.config import load_threat_model

EPS = load_threat_model("attacks/digits-linf.toml")["eps"]
SEED = [f"seed={os.environ.get('ROBUSTDISTILL_TEST_SEED', '0')}"]  # as the test_seed fixture (tests/conftest.py)
FAST = ["epochs=12", "lr_milestones=[]", "val_attack_steps=5", *SEED]


def test_kl_direction_temperatures_and_reductions_by_hand() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    student = torch.tensor([[0.0, 0.0]])  # q = [0.5, 0.5]
    forward = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(p || q), teacher first
    backward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    value = float(teacher_student_kl(teacher, student, reduction="batchmean"))
    assert math.isclose(value, forward, rel_tol=1e-6) and not math.isclose(value, backward, rel_tol=1e-3)
    # "mean" is PyTorch's KLDivLoss() default: averaged over batch x classes, so C times smaller.
    assert math.isclose(float(teacher_student_kl(teacher, student, reduction="mean")), forward / 2, rel_tol=1e-6)
    # A temperature softens the teacher only when asked: at tau_t = 2, p = softmax([0, log 3] / 2).
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    soft = (1 - p1) * math.log((1 - p1) / 0.5) + p1 * math.log(p1 / 0.5)
    value = float(teacher_student_kl(teacher, student, teacher_temperature=2.0, reduction="batchmean"))
    assert math.isclose(value, soft, rel_tol=1e-6)
    # Batch averaging: two identical rows give the same value as one.
    two = teacher_student_kl(teacher.repeat(2, 1), student.repeat(2, 1), reduction="batchmean")
    assert math.isclose(float(two), forward, rel_tol=1e-6)


def test_maximise_stays_in_the_ball_raises_the_objective_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10))
    model.train()
    data = load_split({"kind": "digits"}, "val")
    x, y = data.x[:32], data.y[:32]
    seen_modes = []

    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        seen_modes.append(model.training)
        return nn.functional.cross_entropy(model(x_adv), y, reduction="sum")

    for bn_mode in ("eval", "train"):
        seen_modes.clear()
        generator = torch.Generator().manual_seed(0)
        x_adv = maximise(model, objective, x, eps=EPS, step_size=EPS / 4, steps=10, norm="linf", start="uniform",
                         bn_mode=bn_mode, generator=generator)
        assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert set(seen_modes) == {bn_mode == "train"} and model.training
    model.eval()
    with torch.no_grad():
        assert objective(x_adv) > objective(x)


def test_attack_starts() -> None:
    x = torch.full((4, 1, 8, 8), 0.5)
    uniform = attack_start(x, "uniform", 0.1, "linf", torch.Generator().manual_seed(0))
    normal = attack_start(x, "normal", 0.1, "linf", torch.Generator().manual_seed(0))
    assert 0.05 < (uniform - x).abs().max() <= 0.1  # spread over the ball
    assert (normal - x).abs().max() < 0.01  # x + 0.001 N(0, 1)


@pytest.fixture(scope="module")
def robust_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ard") / "trades"
    return trainers.create("trades", recipe="defenses/digits-trades.toml", overrides=["epochs=8", "lr_milestones=[]",
                                                                                    "val_attack_steps=5", *SEED]).fit(out)


def pgd_accuracy(path: Path) -> float:
    model = load_model(path)
    data = load_split({"kind": "digits"}, "test")
    x_adv = attacks.create("pgd", eps=EPS, alpha=EPS / 4, steps=20, seed=0)(model, data.x, data.y)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == data.y).float().mean())


@pytest.fixture(scope="module")
def clean_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainers.create("standard", recipe="defenses/digits-standard.toml",
                           overrides=["epochs=10", "lr_milestones=[]", "val_robust=false", *SEED]).fit(
        tmp_path_factory.mktemp("clean") / "teacher")


@pytest.fixture(scope="module")
def kd_baseline(clean_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """PGD accuracy of the plain KD student (defenses/digits-kd.toml: Hinton KD of a clean teacher), same budget."""
    overrides = [f"teacher={clean_teacher}", "teacher_recipe=''", *FAST]
    out = tmp_path_factory.mktemp("kd") / "kd"
    return pgd_accuracy(trainers.create("kd", recipe="defenses/digits-kd.toml", overrides=overrides).fit(out))


@pytest.mark.parametrize("method", ["ard", "rslad", "adaad", "mtard", "b-mtard"])
def test_student_beats_plain_kd_under_pgd(method: str, robust_teacher: Path, clean_teacher: Path, kd_baseline: float,
                                          tmp_path: Path) -> None:
    teachers = ([f"clean_teacher={clean_teacher}", f"robust_teacher={robust_teacher}"] if "mtard" in method
                else [f"teacher={robust_teacher}"])
    trainer = trainers.create(method, recipe=f"defenses/digits-{method}.toml", overrides=[*teachers, *FAST])
    path = trainer.fit(tmp_path / method)
    robust = pgd_accuracy(path)
    assert robust > kd_baseline + 0.10, (method, robust, kd_baseline)
    provenance = load_model(path).provenance
    assert provenance["parents"][0]["role"].endswith("teacher") and provenance["recipe"]["method"] == method
    assert all("val_robust_accuracy" in record for record in provenance["history"])


def test_papers_settings_are_the_defaults() -> None:
    ard = trainers.create("ard").config
    assert (ard.temperature, ard.alpha, ard.attack_bn_mode, ard.kl_reduction, ard.attack_start) == (
        30.0, 1.0, "train", "mean", "uniform")
    rslad = trainers.create("rslad").config
    assert (rslad.adv_weight, rslad.attack_bn_mode, rslad.kl_reduction, rslad.epochs) == (5 / 6, "eval", "mean", 300)
    adaad = trainers.create("adaad").config
    assert (adaad.alpha, adaad.attack_bn_mode, adaad.attack_start) == (1.0, "eval", "normal")
    for config in (ard, rslad, adaad):
        assert (config.eps, config.step_size, config.attack_steps, config.lr, config.weight_decay) == (
            8 / 255, 2 / 255, 10, 0.1, 2e-4)
        assert config.select_metric == "mean"  # on val; the official scripts keep their best test-set epochs
