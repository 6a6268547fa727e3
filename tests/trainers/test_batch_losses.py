"""Each training method's loss on one batch against a hand computation: ARD, RSLAD, AdaAD, TRADES, PGD-AT,
defensive distillation and ProARD's inner (RSLAD) loss.

Real tiny models (a digits teacher trained for two epochs, the recipe's student at its seeded initialisation) and a
fixed batch of real digits. Each trainer's own attack runs unchanged; the test only records the x' it returned, then
computes the expected loss from that x' by the formula written out below (KL direction, temperature, T^2 factor,
alpha weighting, which input the teacher sees, reduction), in float64 with the eager teacher. For each method the
test also checks that the plausible wrong variants (KL the other way round, the teacher on the other input, no T^2,
the other reduction) give a value the tolerance tells apart, so the hand check can actually fail.

Facts: /work/shared/reference/trainers.md and each trainer's config docstring. AdaAD's inner maximisation is tested
in tests/trainers/test_adaad.py; here only its outer loss for the x' it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robustdistill import load_model, trainers
from robustdistill.data import ImageSplit, load_split
from robustdistill.models import Classifier
from robustdistill.trainers.base import Trainer

N = 16  # points in the batch
# Relative: float32 training code against float64 by hand, traced against eager teacher (measured: 1e-6 or less).
TOLERANCE = 2e-4
# At ARD's tau = 30 the two softmaxes are nearly uniform and the KL is a sum of near-cancelling float32 terms
# (measured: up to 9e-4 relative).
TOLERANCE_TAU_30 = 4e-3


@pytest.fixture(scope="module")
def train() -> ImageSplit:
    return load_split({"kind": "digits"}, "train")


@pytest.fixture(scope="module")
def batch(train: ImageSplit) -> tuple[torch.Tensor, torch.Tensor]:
    return train.x[:N], train.y[:N]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real digits teacher (cnn-small, two epochs): confident enough that the two KL directions differ."""
    return trainers.create("standard", recipe="defenses/digits-standard.toml",
                           overrides=["epochs=2", "lr_milestones=[]", "val_robust=false"]).fit(
        tmp_path_factory.mktemp("batch-loss") / "teacher")


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained students of both digits sizes (another seed than the teacher): a student at its random
    initialisation gives nearly uniform outputs, for which the wrong loss variants are nearly the right value."""
    root = tmp_path_factory.mktemp("batch-loss-students")
    return {arch: trainers.create("standard", recipe="defenses/digits-standard.toml",
                                  overrides=[f"arch={arch}", "epochs=2", "lr_milestones=[]", "val_robust=false",
                                             "optimizer=adam", "lr=0.003", "weight_decay=0", "seed=1"]).fit(root / arch)
            for arch in ("cnn-tiny", "cnn-small")}


def recording(owner: Any, method: str) -> list[torch.Tensor]:
    """Keep every value ``owner.method`` returns (the method itself runs unchanged)."""
    seen: list[torch.Tensor] = []
    original = getattr(owner, method)

    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(*args, **kwargs)
        seen.append(out.detach().clone())
        return out

    setattr(owner, method, wrapper)
    return seen


def log_softmax(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    z = logits.double() / tau
    return z - z.logsumexp(dim=1, keepdim=True)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, tau: float = 1.0, reduction: str = "mean") -> float:
    """KL(softmax(p / tau) || softmax(q / tau)): summed over classes, averaged over the batch ("batchmean"), and
    divided by the number of classes too for "mean" (PyTorch's KLDivLoss() default)."""
    log_p, log_q = log_softmax(p_logits, tau), log_softmax(q_logits, tau)
    per_point = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return float(per_point.mean() / (p_logits.shape[1] if reduction == "mean" else 1))


def ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(-log_softmax(logits).gather(1, y[:, None]).mean())


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, train_mode: bool) -> torch.Tensor:
    """The model's logits in the given mode (each batch alone: BatchNorm sees it alone, as in the trainers)."""
    was = model.training
    model.train(train_mode)
    out = model(x)
    model.train(was)
    return out


def run_batch(trainer: Trainer, model: Classifier, batch: tuple[torch.Tensor, torch.Tensor],
              attack_method: str | None, owner: Any = None) -> tuple[float, torch.Tensor | None]:
    """One real batch_loss call; returns (its loss, the x' its attack returned)."""
    seen = recording(owner or trainer, attack_method) if attack_method else []
    x, y = batch
    model.train()
    loss, _ = trainer.batch_loss(model, x, y, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.requires_grad
    x_adv = seen[-1] if seen else None
    if x_adv is not None:
        assert float((x_adv - x).abs().max()) > 0.05  # x' is far enough from x for the teacher's input to matter
    return float(loss.detach()), x_adv


def student_for(trainer: Trainer, train: ImageSplit, students: dict[str, Path] | None = None) -> Classifier:
    """The recipe's model, with the trained weights of its architecture when given (ProARD: the teacher's)."""
    torch.manual_seed(0)
    model = trainer.build_model(train)
    if students is not None:
        model.load_state_dict(load_model(students[trainer.config.arch]).state_dict())
    return model


def distinct(loss: float, expected: float, wrong: dict[str, float], tolerance: float = TOLERANCE) -> None:
    """The loss equals the hand value, and every wrong variant is told apart from it by more than the tolerance."""
    assert loss == pytest.approx(expected, rel=tolerance), (loss, expected)
    for name, value in wrong.items():
        assert abs(value - expected) > 4 * tolerance * abs(expected), f"{name} is not told apart: {value} ~ {expected}"


def distillation_trainer(method: str, teacher: Path, train: ImageSplit, *overrides: str) -> Trainer:
    trainer = trainers.create(method, recipe=f"defenses/digits-{method}.toml",
                              overrides=[f"teacher={teacher}", "teacher_recipe=''", *overrides])
    trainer.prepare(train)
    return trainer


@pytest.mark.parametrize(("alpha", "tau"), [(1.0, 30.0), (1.0, 2.0), (0.3, 2.0)])
def test_ard_loss_by_hand(alpha: float, tau: float, teacher: Path, train: ImageSplit,
                          batch: tuple[torch.Tensor, torch.Tensor], students: dict[str, Path]) -> None:
    """ARD: alpha * tau^2 * KL(σ(T(x)/tau) || σ(S(x')/tau)) + (1 - alpha) * CE(S(x), y), mean KL; the teacher sees
    the CLEAN x, the student x' (in train mode). At the paper's tau = 30 both softmaxes are nearly uniform and the KL
    is nearly symmetric, so the direction and the teacher's input are told apart at tau = 2."""
    trainer = distillation_trainer("ard", teacher, train, f"alpha={alpha}", f"temperature={tau}")
    student = student_for(trainer, train, students)
    loss, x_adv = run_batch(trainer, student, batch, "attack")
    assert x_adv is not None
    x, y = batch
    t_clean, t_adv = outputs(trainer.teacher, x, False), outputs(trainer.teacher, x_adv, False)
    s_adv, s_clean = outputs(student, x_adv, True), outputs(student, x, True)

    def ard(t: torch.Tensor = t_clean, s: torch.Tensor = s_adv, scale: float = tau**2, temp: float = tau,
            flip: bool = False, reduction: str = "mean", weight: float = alpha, s_ce: torch.Tensor = s_clean) -> float:
        soft = kl(s, t, temp, reduction) if flip else kl(t, s, temp, reduction)
        return weight * scale * soft + (1 - weight) * ce(s_ce, y)

    if alpha < 1:  # the hard-label term: its input and its weight
        wrong = {"CE on x'": ard(s_ce=s_adv), "alpha on the CE": ard(weight=1 - alpha)}
    else:
        wrong = {"no tau^2": ard(scale=1.0), "batchmean": ard(reduction="batchmean"), "tau 1": ard(temp=1.0)}
    if alpha == 1 and tau < 30:
        wrong |= {"reverse KL": ard(flip=True), "teacher on x'": ard(t=t_adv), "student on x": ard(s=s_clean)}
    distinct(loss, ard(), wrong, TOLERANCE_TAU_30 if tau == 30 else TOLERANCE)


def rslad_expected(trainer: Trainer, student: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> tuple[float, dict[str, float]]:
    """RSLAD: w * KL(T(x) || S(x')) + (1 - w) * KL(T(x) || S(x)), w = 5/6, mean KL: the teacher's CLEAN soft labels
    supervise both terms. Returns (the hand value, the wrong variants)."""
    w = trainer.config.adv_weight
    assert w == pytest.approx(5 / 6)
    t_clean, t_adv = outputs(trainer.teacher, x, False), outputs(trainer.teacher, x_adv, False)
    s_adv, s_clean = outputs(student, x_adv, True), outputs(student, x, True)

    def rslad(t_for_adv: torch.Tensor, flip: bool = False, reduction: str = "mean", weight: float = w) -> float:
        pair = (lambda t, s: kl(s, t, reduction=reduction)) if flip else (lambda t, s: kl(t, s, reduction=reduction))
        return weight * pair(t_for_adv, s_adv) + (1 - weight) * pair(t_clean, s_clean)

    return rslad(t_clean), {"reverse KL": rslad(t_clean, flip=True), "teacher on x'": rslad(t_adv),
                            "batchmean": rslad(t_clean, reduction="batchmean"), "weights swapped": rslad(t_clean, weight=1 - w)}


def test_rslad_loss_by_hand(teacher: Path, train: ImageSplit, batch: tuple[torch.Tensor, torch.Tensor],
                            students: dict[str, Path]) -> None:
    trainer = distillation_trainer("rslad", teacher, train)
    student = student_for(trainer, train, students)
    loss, x_adv = run_batch(trainer, student, batch, "attack")
    assert x_adv is not None
    expected, wrong = rslad_expected(trainer, student, batch[0], x_adv)
    distinct(loss, expected, wrong)


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_adaad_outer_loss_by_hand(alpha: float, teacher: Path, train: ImageSplit,
                                  batch: tuple[torch.Tensor, torch.Tensor], students: dict[str, Path]) -> None:
    """AdaAD's outer loss for the x' its attack returned: alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x)),
    with the config's KL reduction; the teacher sees the ADVERSARIAL x' (unlike ARD and RSLAD)."""
    trainer = distillation_trainer("adaad", teacher, train, f"alpha={alpha}")
    student = student_for(trainer, train, students)
    loss, x_adv = run_batch(trainer, student, batch, "attack")
    assert x_adv is not None
    x = batch[0]
    reduction = trainer.config.kl_reduction
    other = "batchmean" if reduction == "mean" else "mean"
    t_clean, t_adv = outputs(trainer.teacher, x, False), outputs(trainer.teacher, x_adv, False)
    s_adv, s_clean = outputs(student, x_adv, True), outputs(student, x, True)

    def adaad(t: torch.Tensor, flip: bool = False, red: str = reduction) -> float:
        first = kl(s_adv, t, reduction=red) if flip else kl(t, s_adv, reduction=red)
        return alpha * first + (1 - alpha) * kl(t_clean, s_clean, reduction=red)

    distinct(loss, adaad(t_adv), {"reverse KL": adaad(t_adv, flip=True), "teacher on x": adaad(t_clean),
                                  "other reduction": adaad(t_adv, red=other)})


def adversarial_training_batch(
    method: str, train: ImageSplit, batch: tuple[torch.Tensor, torch.Tensor], students: dict[str, Path],
    attack_method: str,
) -> tuple[Trainer, Classifier, float, torch.Tensor]:
    """A teacher-free method's digits recipe, its (trained) model and one real batch_loss call on it: (trainer,
    model, loss, the x' its attack returned)."""
    trainer = trainers.create(method, recipe=f"defenses/digits-{method}.toml")
    model = student_for(trainer, train, students)
    loss, x_adv = run_batch(trainer, model, batch, attack_method)
    assert x_adv is not None
    return trainer, model, loss, x_adv


def test_trades_loss_by_hand(train: ImageSplit, batch: tuple[torch.Tensor, torch.Tensor],
                             students: dict[str, Path]) -> None:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x')), beta = 6, batchmean KL, f in train mode."""
    trainer, model, loss, x_adv = adversarial_training_batch("trades", train, batch, students, "trades_adversarial")
    x, y = batch
    beta = trainer.config.beta
    assert beta == 6.0
    clean, adv = outputs(model, x, True), outputs(model, x_adv, True)
    expected = ce(clean, y) + beta * kl(clean, adv, reduction="batchmean")
    distinct(loss, expected, {
        "reverse KL": ce(clean, y) + beta * kl(adv, clean, reduction="batchmean"),
        "mean KL": ce(clean, y) + beta * kl(clean, adv, reduction="mean"),
        "CE on x'": ce(adv, y) + beta * kl(clean, adv, reduction="batchmean"),
    })


def test_pgd_at_loss_by_hand(train: ImageSplit, batch: tuple[torch.Tensor, torch.Tensor],
                             students: dict[str, Path]) -> None:
    """PGD-AT (Madry): CE(f(x'), y), averaged over the batch, f in train mode."""
    _, model, loss, x_adv = adversarial_training_batch("pgd-at", train, batch, students, "adversarial")
    x, y = batch
    distinct(loss, ce(outputs(model, x_adv, True), y), {"CE on x": ce(outputs(model, x, True), y)})


@pytest.mark.parametrize("temperature", [100.0, 5.0])
def test_defensive_distillation_loss_by_hand(temperature: float, teacher: Path, train: ImageSplit,
                                             batch: tuple[torch.Tensor, torch.Tensor], students: dict[str, Path]) -> None:
    """Defensive distillation (Papernot 2016): the student's softmax at T against the teacher's softmax at T,
    -sum_k softmax(t/T)_k log softmax(s/T)_k averaged over the batch, no T^2 factor; clean inputs only. At the
    paper's T = 100 the student's softened output is nearly uniform, so the teacher's temperature is told apart at
    T = 5."""
    trainer = trainers.create("defensive-distillation", recipe="defenses/digits-defensive-distillation.toml",
                              overrides=[f"teacher={teacher}", f"temperature={temperature}"])
    trainer.teacher_path = teacher  # what fit() sets before prepare()
    trainer.prepare(train)
    student = student_for(trainer, train, students)
    loss, _ = run_batch(trainer, student, batch, None)
    x, _ = batch
    t, s = outputs(trainer.teacher, x, False), outputs(student, x, True)

    def soft_ce(t_temp: float, s_temp: float) -> float:
        return float(-(log_softmax(t, t_temp).exp() * log_softmax(s, s_temp)).sum(dim=1).mean())

    wrong = {"student at T = 1": soft_ce(temperature, 1.0), "times T^2": temperature**2 * soft_ce(temperature, temperature)}
    if temperature < 100:
        wrong["teacher at T = 1"] = soft_ce(1.0, temperature)
    distinct(loss, soft_ce(temperature, temperature), wrong)


@pytest.fixture(scope="module")
def proard_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The largest digits ProARD network, trained briefly with TRADES (any real weights will do here)."""
    return trainers.create("trades", recipe="defenses/digits-proard-teacher.toml",
                           overrides=["epochs=1", "attack_steps=2", "lr_milestones=[]", "val_attack_steps=2"]).fit(
        tmp_path_factory.mktemp("batch-loss") / "proard-teacher")


def test_proard_inner_loss_is_rslad_on_the_sampled_subnet(proard_teacher: Path, train: ImageSplit,
                                                        batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """ProARD (default loss "rslad"): on one sampled sub-network, 5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x)),
    mean KL, T the frozen largest network on the clean x."""
    trainer = trainers.create("proard", recipe="defenses/digits-proard.toml",
                              overrides=[f"teacher={proard_teacher}", "teacher_recipe=''"])
    trainer.prepare(train)
    student = student_for(trainer, train)  # init_from_teacher: the largest network is the teacher's
    network = student.network
    active: list[Any] = []
    inner_attack: Callable[..., torch.Tensor] = trainer.inner.attack

    def attack_on_active(*args: Any, **kwargs: Any) -> torch.Tensor:
        active.append(network.active)  # the sub-network this batch was sampled to train
        return inner_attack(*args, **kwargs)

    trainer.inner.attack = attack_on_active
    loss, x_adv = run_batch(trainer, student, batch, "attack", owner=trainer.inner)
    assert x_adv is not None and len(active) == 1
    network.set_active(active[0])
    expected, wrong = rslad_expected(trainer.inner, student, batch[0], x_adv)
    distinct(loss, expected, wrong)
