"""Token-level LM distillation objectives against hand computations.

The references below are written out with explicit probabilities in plain Python (math.exp / math.log over
lists), one token at a time, so they share no code and no formula shortcut with the implementation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from robustdistill.errors import UserInputError
from robustdistill.trainers import lm_objectives as lo

# batch 2, seq 3, vocab 4; asymmetric on purpose (the teacher is peaked, the student flat-ish).
STUDENT = [[[0.2, -1.0, 0.5, 0.1], [1.5, 0.3, -0.7, 0.0], [0.0, 0.0, 0.0, 0.0]],
           [[-0.3, 2.0, 0.4, -1.2], [0.9, 0.9, -0.4, 0.2], [3.0, -2.0, 1.0, 0.5]]]
TEACHER = [[[2.5, -0.5, 0.0, -1.0], [0.1, 2.2, -1.5, 0.3], [1.0, -1.0, 0.5, 2.0]],
           [[0.0, 3.1, -2.0, 0.7], [-1.1, 0.4, 2.6, 0.0], [0.5, 0.5, -3.0, 1.5]]]
# prompt tokens (False) at the start of each row; row 0's last token is padding.
MASK = [[False, True, False], [False, True, True]]


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(a: list[float], b: list[float]) -> float:
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b))


def mix(w: float, a: list[float], b: list[float]) -> list[float]:
    return [w * ai + (1 - w) * bi for ai, bi in zip(a, b)]


def hand_fkl(s: list[float], t: list[float], T: float) -> float:
    return kl(softmax(t, T), softmax(s, T))


def hand_rkl(s: list[float], t: list[float], T: float) -> float:
    return kl(softmax(s, T), softmax(t, T))


def hand_skl(alpha: float) -> Callable[[list[float], list[float], float], float]:
    return lambda s, t, T: kl(softmax(t, T), mix(alpha, softmax(t, T), softmax(s, T)))


def hand_srkl(alpha: float) -> Callable[[list[float], list[float], float], float]:
    return lambda s, t, T: kl(softmax(s, T), mix(1 - alpha, softmax(t, T), softmax(s, T)))


def hand_gjsd(beta: float) -> Callable[[list[float], list[float], float], float]:
    def one(s: list[float], t: list[float], T: float) -> float:
        p, q = softmax(t, T), softmax(s, T)
        m = mix(beta, p, q)
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    return one


def hand_taid(tt: float) -> Callable[[list[float], list[float], float], float]:
    def one(s: list[float], t: list[float], T: float) -> float:
        target = softmax([(1 - tt) * si + tt * ti for si, ti in zip(s, t)], T)
        return kl(target, softmax(s, T))
    return one


def hand_mean(per_token: Callable[[list[float], list[float], float], float], T: float,
              student: list = STUDENT, teacher: list = TEACHER, mask: list = MASK) -> float:
    values = [per_token(student[b][s], teacher[b][s], T)
              for b in range(len(mask)) for s in range(len(mask[b])) if mask[b][s]]
    return sum(values) / len(values)


def tensors(student: list = STUDENT, teacher: list = TEACHER, mask: list = MASK
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
            torch.tensor(mask))


CASES = [
    ("forward-kl", {}, hand_fkl),
    ("reverse-kl", {}, hand_rkl),
    ("skew-kl", {"alpha": 0.1}, hand_skl(0.1)),
    ("skew-kl", {"alpha": 0.7}, hand_skl(0.7)),
    ("skew-reverse-kl", {"alpha": 0.1}, hand_srkl(0.1)),
    ("skew-reverse-kl", {"alpha": 0.7}, hand_srkl(0.7)),
    ("gjsd", {"beta": 0.5}, hand_gjsd(0.5)),
    ("gjsd", {"beta": 0.2}, hand_gjsd(0.2)),
    ("taid", {"t": 0.4}, hand_taid(0.4)),
    ("taid", {"t": 0.9}, hand_taid(0.9)),
]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("name", "params", "hand"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_objective_equals_the_hand_computation(name: str, params: dict, hand: Callable,
                                                    temperature: float) -> None:
    s, t, m = tensors()
    got = lo.distillation_loss(name, s, t, m, temperature=temperature, **params)
    assert got.item() == pytest.approx(hand_mean(hand, temperature), rel=1e-9, abs=1e-12)


def test_defaults_are_the_papers() -> None:
    s, t, m = tensors()
    assert lo.distillation_loss("skew-kl", s, t, m).item() == pytest.approx(hand_mean(hand_skl(0.1), 1.0))
    assert lo.distillation_loss("skew-reverse-kl", s, t, m).item() == pytest.approx(hand_mean(hand_srkl(0.1), 1.0))
    assert lo.distillation_loss("gjsd", s, t, m).item() == pytest.approx(hand_mean(hand_gjsd(0.5), 1.0))


def test_kl_direction() -> None:
    s, t, m = tensors()
    forward, reverse = lo.forward_kl(s, t, m).item(), lo.reverse_kl(s, t, m).item()
    assert abs(forward - reverse) > 0.05  # the example is asymmetric enough to tell the directions apart
    assert forward == pytest.approx(hand_mean(hand_fkl, 1.0))
    assert reverse == pytest.approx(hand_mean(hand_rkl, 1.0))
    # swapping the roles swaps the direction
    assert lo.reverse_kl(t, s, m).item() == pytest.approx(forward)


def test_skew_mixing() -> None:
    s, t, m = tensors()
    forward, reverse = lo.forward_kl(s, t, m).item(), lo.reverse_kl(s, t, m).item()
    assert lo.skew_forward_kl(s, t, m, alpha=1e-7).item() == pytest.approx(forward, rel=1e-5)
    assert lo.skew_reverse_kl(s, t, m, alpha=1e-7).item() == pytest.approx(reverse, rel=1e-5)
    # convexity: KL(p || a p + (1 - a) q) <= (1 - a) KL(p || q), so a real skew is strictly smaller
    assert lo.skew_forward_kl(s, t, m, alpha=0.1).item() <= 0.9 * forward + 1e-12
    assert lo.skew_reverse_kl(s, t, m, alpha=0.1).item() <= 0.9 * reverse + 1e-12


def test_gjsd_endpoints_and_limits() -> None:
    s, t, m = tensors()
    forward, reverse = lo.forward_kl(s, t, m).item(), lo.reverse_kl(s, t, m).item()
    assert lo.generalized_jsd(s, t, m, beta=0.0).item() == pytest.approx(forward)
    assert lo.generalized_jsd(s, t, m, beta=1.0).item() == pytest.approx(reverse)
    # the endpoints are the limits of JSD(beta) / beta and JSD(beta) / (1 - beta): beta weights the teacher
    eps = 1e-6
    assert lo.generalized_jsd(s, t, m, beta=eps).item() / eps == pytest.approx(forward, rel=1e-4)
    assert lo.generalized_jsd(s, t, m, beta=1 - eps).item() / eps == pytest.approx(reverse, rel=1e-4)


def test_taid_endpoints() -> None:
    s, t, m = tensors()
    assert lo.taid(s, t, m, t=1.0).item() == pytest.approx(lo.forward_kl(s, t, m).item())
    student = s.clone().requires_grad_(True)
    loss = lo.taid(student, t, m, t=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert student.grad is not None and student.grad.abs().max().item() < 1e-12  # the target is the detached student


def test_taid_interpolates_logits_not_probabilities() -> None:
    s, t, _ = tensors()
    target = lo.taid_target(s, t, 0.3).exp()[0, 0].tolist()
    assert target == pytest.approx(softmax([0.7 * a + 0.3 * b for a, b in zip(STUDENT[0][0], TEACHER[0][0])], 1.0))
    assert target != pytest.approx(mix(0.3, softmax(TEACHER[0][0], 1.0), softmax(STUDENT[0][0], 1.0)), abs=1e-3)


@pytest.mark.parametrize(("name", "params"), [(c[0], c[1]) for c in CASES])
def test_masked_positions_change_nothing(name: str, params: dict) -> None:
    s, t, m = tensors()
    before = lo.distillation_loss(name, s, t, m, **params)
    s2, t2 = s.clone(), t.clone()
    s2[~m] = torch.tensor([50.0, float("nan"), -3.0, float("inf")], dtype=s2.dtype)
    t2[~m] = torch.tensor([-7.0, 9.0, float("-inf"), 0.0], dtype=t2.dtype)
    student = s2.requires_grad_(True)
    after = lo.distillation_loss(name, student, t2, m, **params)
    after.backward()
    assert after.item() == before.item()
    assert student.grad is not None and torch.all(student.grad[~m] == 0)


@pytest.mark.parametrize(("name", "params"), [(c[0], c[1]) for c in CASES])
def test_temperature_divides_both_logits(name: str, params: dict) -> None:
    s, t, m = tensors()
    tempered = lo.distillation_loss(name, s, t, m, temperature=3.0, **params).item()
    assert tempered == pytest.approx(lo.distillation_loss(name, s / 3, t / 3, m, **params).item())
    assert tempered != pytest.approx(lo.distillation_loss(name, s, t, m, **params).item())  # no T^2 rescaling hides it


@pytest.mark.parametrize(("name", "params"),
                         [(c[0], c[1]) for c in CASES] + [("gjsd", {"beta": 0.0}), ("gjsd", {"beta": 1.0})])
def test_zero_when_the_student_is_the_teacher(name: str, params: dict) -> None:
    _, t, m = tensors()
    assert lo.distillation_loss(name, t.clone(), t, m, **params).item() == pytest.approx(0.0, abs=1e-12)
    s, _, _ = tensors()
    assert lo.distillation_loss(name, s, t, m, **params).item() > 1e-4  # and not zero otherwise


@pytest.mark.parametrize(("name", "params"), [(c[0], c[1]) for c in CASES])
def test_gradient_reaches_the_student_only(name: str, params: dict) -> None:
    s, t, m = tensors()
    student, teacher = s.requires_grad_(True), t.requires_grad_(True)
    lo.distillation_loss(name, student, teacher, m, **params).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.all(student.grad[m].abs().sum(-1) > 0)


def test_extreme_logits_stay_finite_and_bf16_is_upcast() -> None:
    _, _, m = tensors()
    s = torch.tensor(STUDENT, dtype=torch.float64) * 1000
    t = torch.tensor(TEACHER, dtype=torch.float64) * 1000
    for name, params, _ in CASES:
        assert torch.isfinite(lo.distillation_loss(name, s, t, m, **params))
        loss = lo.distillation_loss(name, s.bfloat16(), t.bfloat16(), m, **params)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_no_response_token_gives_a_differentiable_zero() -> None:
    s, t, m = tensors()
    student = s.requires_grad_(True)
    loss = lo.forward_kl(student, t, torch.zeros_like(m))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(student.grad == 0)


@pytest.mark.parametrize(("call", "field"), [
    (lambda s, t, m: lo.distillation_loss("kl", s, t, m), "objective"),
    (lambda s, t, m: lo.distillation_loss("forward-kl", s, t, m, temperature=0), "temperature"),
    (lambda s, t, m: lo.distillation_loss("forward-kl", s, t, m, temperature=-1.0), "temperature"),
    (lambda s, t, m: lo.distillation_loss("skew-kl", s, t, m, alpha=0.0), "alpha"),
    (lambda s, t, m: lo.distillation_loss("skew-reverse-kl", s, t, m, alpha=1.0), "alpha"),
    (lambda s, t, m: lo.distillation_loss("gjsd", s, t, m, beta=1.5), "beta"),
    (lambda s, t, m: lo.distillation_loss("taid", s, t, m, t=-0.1), "t"),
    (lambda s, t, m: lo.distillation_loss("forward-kl", s, t, m, beta=0.5), "beta"),
    (lambda s, t, m: lo.distillation_loss("gjsd", s, t, m, alpha=0.1), "alpha"),
    (lambda s, t, m: lo.forward_kl(s, t[..., :3], m), "teacher_logits"),
    (lambda s, t, m: lo.forward_kl(s, t[:, :2], m), "teacher_logits"),
    (lambda s, t, m: lo.forward_kl(s, t, m[:, :2]), "response_mask"),
    (lambda s, t, m: lo.forward_kl(s[0], t[0], m[0]), "student_logits"),
])
def test_bad_input_names_the_field(call: Callable, field: str) -> None:
    with pytest.raises(UserInputError) as caught:
        call(*tensors())
    assert caught.value.field == field
