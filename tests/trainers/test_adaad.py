"""AdaAD against the public code (boyellow/AdaAD): the inner maximisation's gradient flows through BOTH the teacher and
the student into x' (the teacher frozen), and the outer loss is KL(T(x') || S(x')) with the config's reduction ("mean"
over batch x classes, the public CIFAR-10 loss). A real tiny teacher trained on digits, a real student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustdistill import trainers
from robustdistill.attacks.base import project
from robustdistill.data import load_split
from robustdistill.models import Classifier
from robustdistill.trainers.ard import AdaADTrainer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, test_seed: int) -> Path:
    """A cnn-small trained for 3 epochs on the real digits: any real teacher whose gradient is not the student's."""
    return trainers.create("standard", recipe="defenses/digits-standard.toml",
                           overrides=["epochs=3", "lr_milestones=[]", "val_robust=false", f"seed={test_seed}"]).fit(
        tmp_path_factory.mktemp("adaad") / "teacher")


class RecordingAdaAD(AdaADTrainer):
    """AdaAD as it is, keeping the attack objective it built and the x' it crafted, so a test can inspect both."""

    def attack(self, model, x, objective, generator):  # type: ignore[no-untyped-def]
        self.objective = objective
        self.x_adv = super().attack(model, x, objective, generator)
        return self.x_adv


def kl_sum(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """sum over batch and classes of p_T (log p_T - log p_S), written out by hand."""
    log_p, log_q = teacher_logits.log_softmax(1), student_logits.log_softmax(1)
    return (log_p.exp() * (log_p - log_q)).sum()


def test_inner_gradient_flows_through_the_teacher_and_the_outer_loss_is_the_mean_kl(teacher: Path, test_seed: int) -> None:
    config = trainers.create("adaad", recipe="defenses/digits-adaad.toml",
                             overrides=[f"teacher={teacher}", "teacher_recipe=''", "attack_steps=1"]).config
    assert config.kl_reduction == "mean"
    trainer = RecordingAdaAD(config)
    train = load_split({"kind": "digits"}, "train")
    trainer.prepare(train)
    torch.manual_seed(test_seed)
    student = Classifier.from_arch("cnn-tiny", num_classes=10, input_shape=(1, 8, 8)).train()
    x, y = train.x[:16], train.y[:16]
    loss, adv_logits = trainer.batch_loss(student, x, y, torch.Generator().manual_seed(0))

    # The inner objective's input gradient is that of KL(T(x') || S(x')) through BOTH models ...
    net = trainer.teacher
    assert not any(p.requires_grad for p in net.parameters())  # the teacher stays frozen
    student.eval()  # as during the attack (cnn-tiny has no BatchNorm, so the mode does not change its outputs)
    x_probe = project(x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), x, config.eps, "linf")
    x_probe.requires_grad_(True)
    (inner,) = torch.autograd.grad(trainer.objective(x_probe), x_probe)
    (both,) = torch.autograd.grad(kl_sum(net(x_probe), student(x_probe)), x_probe)
    (student_only,) = torch.autograd.grad(kl_sum(net(x_probe).detach(), student(x_probe)), x_probe)
    assert torch.allclose(inner, both, rtol=1e-4, atol=1e-7)
    # ... which is not the student-only gradient: the signed step moves many pixels the other way.
    assert not torch.allclose(inner, student_only, rtol=1e-2, atol=1e-5)
    assert float((inner.sign() != student_only.sign()).float().mean()) > 0.05

    # One signed step from x + 0.001 N(0, 1) (the trainer's generator), taken along that gradient.
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    start = project(x + 0.001 * noise, x, config.eps, "linf").requires_grad_(True)
    (step,) = torch.autograd.grad(kl_sum(net(start), student(start)), start)
    expected = project(start.detach() + config.step_size * step.sign(), x, config.eps, "linf")
    assert torch.allclose(trainer.x_adv, expected, atol=1e-6)

    # The outer loss: alpha * KL(T(x') || S(x')) with S in train mode, averaged over batch x classes.
    student.train()
    with torch.no_grad():
        outer = kl_sum(net(trainer.x_adv), student(trainer.x_adv)) / (len(x) * 10)
    assert float(loss.detach()) == pytest.approx(float(outer), rel=1e-4)
    assert torch.allclose(adv_logits.detach(), student(trainer.x_adv).detach(), atol=1e-6)
