"""MTARD and B-MTARD: the loss against a hand computation, the three balances as pure rules, and short real runs
on digits with two small teachers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from robustdistill import load_model, trainers
from robustdistill.errors import UserInputError
from robustdistill.models import checkpoint_sha256
from robustdistill.trainers.base import Trainer
from robustdistill.trainers.mtard import (
    BMTARDTrainer,
    EntropyBalance,
    ExtendedLossBalance,
    MTARDTrainer,
    NormalizationLossBalance,
    mean_p_log_p,
    mtard_kl_terms,
)

# --- the loss ---------------------------------------------------------------------------------------------------------


def _kl_by_hand(teacher: list[list[float]], student: list[list[float]], tau: float) -> float:
    """mean over batch x classes of p (log p - log q), p = softmax(teacher / tau), q = softmax(student)."""
    total, count = 0.0, 0
    for t_row, s_row in zip(teacher, student, strict=True):
        zt = sum(math.exp(v / tau) for v in t_row)
        zs = sum(math.exp(v) for v in s_row)
        for t, s in zip(t_row, s_row, strict=True):
            p, q = math.exp(t / tau) / zt, math.exp(s) / zs
            total += p * (math.log(p) - math.log(q))
            count += 1
    return total / count


def test_kl_terms_match_a_hand_computation_with_the_temperature_on_the_teacher_only() -> None:
    t_adv = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.5]]
    s_adv = [[0.0, 1.0, 0.0], [1.0, -1.0, 0.0]]
    t_nat = [[3.0, -2.0, 0.0], [0.0, 0.0, 0.0]]
    s_nat = [[1.0, 0.0, 2.0], [0.3, 0.2, 0.1]]
    tensor = torch.tensor
    args = (tensor(s_adv), tensor(t_adv), tensor(s_nat), tensor(t_nat))
    loss_adv, loss_nat = mtard_kl_terms(*args, tau_adv=2.0, tau_nat=3.0)
    assert math.isclose(float(loss_adv), _kl_by_hand(t_adv, s_adv, 2.0), rel_tol=1e-5)
    assert math.isclose(float(loss_nat), _kl_by_hand(t_nat, s_nat, 3.0), rel_tol=1e-5)
    # "mean" = batchmean / classes; at tau = 1 the temperature does nothing.
    adv_bm, _ = mtard_kl_terms(*args, tau_adv=2.0, tau_nat=3.0, reduction="batchmean")
    assert math.isclose(float(adv_bm), 3 * float(loss_adv), rel_tol=1e-5)
    plain, _ = mtard_kl_terms(*args)
    assert math.isclose(float(plain), _kl_by_hand(t_adv, s_adv, 1.0), rel_tol=1e-5)


# --- Normalization Loss Balance (ECCV) and the extension's balance ----------------------------------------------------


def _slow_adversarial_losses(n: int = 200) -> list[tuple[float, float]]:
    """The adversarial loss falls from 2.0 by 20%, the clean one from 0.5 by 80%."""
    return [(2.0 * (1 - 0.2 * i / n), 0.5 * (1 - 0.8 * i / n)) for i in range(n)]


@pytest.mark.parametrize("balance_class", [NormalizationLossBalance, ExtendedLossBalance])
def test_the_teacher_whose_loss_falls_more_slowly_gains_weight(balance_class: type[NormalizationLossBalance]) -> None:
    balance = balance_class(lr=0.025)
    assert balance.update(*_slow_adversarial_losses()[0]) == (0.5, 0.5)  # r = (1, 1) at the first batch
    previous = 0.5
    for loss_adv, loss_nat in _slow_adversarial_losses()[1:]:
        w_adv, w_nat = balance.update(loss_adv, loss_nat)
        assert math.isclose(w_adv + w_nat, 1.0, abs_tol=1e-12)
        assert 0.0 <= w_nat <= w_adv <= 1.0
        assert w_adv > previous
        previous = w_adv
    # The target share r_adv / (r_adv + r_nat) at the end is 0.8 / (0.8 + 0.2) = 0.8; the weight approaches it.
    assert 0.7 < previous < 0.8


def test_eccv_balance_step_by_hand() -> None:
    balance = NormalizationLossBalance(lr=0.025)
    balance.update(2.0, 4.0)  # L(0)
    w_adv, w_nat = balance.update(1.0, 1.0)  # r_adv = 0.5, r_nat = 0.25
    expected_nat = 0.5 - 0.025 * (0.5 - 0.25 / 0.75)
    assert math.isclose(w_nat, expected_nat) and math.isclose(w_adv, 1 - expected_nat)


def test_extension_balance_moves_both_weights_clips_and_renormalises() -> None:
    balance = ExtendedLossBalance(lr=0.5)
    balance.w_adv, balance.w_nat = 0.3, 0.7
    balance.update(1.0, 1.0)  # L(0) = (1, 1): r = (1, 1), target shares 0.5 / 0.5
    assert math.isclose(balance.w_adv, 0.3 - 0.5 * (0.3 - 0.5)) and math.isclose(balance.w_nat, 0.7 - 0.5 * (0.7 - 0.5))
    # A step past the target (lr > 1) would make a weight negative: it is clipped at 0 and the pair renormalised.
    balance.lr = 1.5
    balance.w_adv, balance.w_nat = 0.9, 0.1
    w_adv, w_nat = balance.update(1.0, 3.0)  # shares 0.25 / 0.75: w_adv 0.9 - 1.5 * 0.65 < 0 -> 0
    assert (w_adv, w_nat) == (0.0, 1.0)


@settings(max_examples=50, deadline=None)
@given(
    losses=st.lists(st.tuples(st.floats(1e-4, 1e3), st.floats(1e-4, 1e3)), min_size=1, max_size=60),
    extended=st.booleans(),
    lr=st.floats(0.0, 1.0),
)
def test_balance_weights_sum_to_one_and_stay_in_unit_interval(
    losses: list[tuple[float, float]], extended: bool, lr: float
) -> None:
    balance = (ExtendedLossBalance if extended else NormalizationLossBalance)(lr=lr)
    for loss_adv, loss_nat in losses:
        w_adv, w_nat = balance.update(loss_adv, loss_nat)
        assert math.isclose(w_adv + w_nat, 1.0, abs_tol=1e-9)
        assert 0.0 <= w_adv <= 1.0 and 0.0 <= w_nat <= 1.0


# --- Entropy-Based Balance --------------------------------------------------------------------------------------------

FLAT = torch.tensor([[0.2, 0.0, 0.1, -0.1]] * 4)  # nearly uniform: high entropy
SHARP = torch.tensor([[6.0, 0.0, -1.0, 0.5]] * 4)  # confident: low entropy


def test_entropy_rule_lowers_the_temperature_of_the_higher_entropy_teacher() -> None:
    # H = mean(p log p) is minus the entropy over C: the flat (robust) teacher's H is more negative, so
    # H_adv / H_nat > 1: tau_adv <- tau_adv - 0.001 (sharpen it), tau_nat <- tau_nat + 0.001 (soften the clean one).
    h_adv, h_nat = mean_p_log_p(FLAT, 5.0), mean_p_log_p(SHARP, 5.0)
    assert h_adv < h_nat < 0 and h_adv / h_nat - 1 > 0
    balance = EntropyBalance(lr=0.001, tau_adv=5.0, tau_nat=5.0)
    tau_adv, tau_nat = balance.update(FLAT, SHARP)
    assert math.isclose(tau_adv, 4.999) and math.isclose(tau_nat, 5.001)
    # The other way round, the robust teacher being the confident one.
    tau_adv, tau_nat = EntropyBalance(lr=0.001, tau_adv=5.0, tau_nat=5.0).update(SHARP, FLAT)
    assert math.isclose(tau_adv, 5.001) and math.isclose(tau_nat, 4.999)
    # From the start (1, 1) the robust teacher's temperature is already at the floor: only the clean one moves.
    assert EntropyBalance().update(FLAT, SHARP) == (1.0, 1.001)


def test_entropy_balance_uses_the_current_temperature() -> None:
    # At tau_nat = 10 the sharp teacher is flatter than the flat teacher at tau_adv = 1: the direction reverses.
    assert mean_p_log_p(SHARP, 10.0) < mean_p_log_p(FLAT * 30, 1.0)
    tau_adv, tau_nat = EntropyBalance(lr=0.001, tau_adv=2.0, tau_nat=8.0).update(FLAT * 30, SHARP)
    assert tau_adv > 2.0 and tau_nat < 8.0


def test_temperatures_stay_within_bounds_over_many_steps() -> None:
    generator = torch.Generator().manual_seed(0)
    balance = EntropyBalance(lr=0.05)
    seen = []
    for step in range(1200):
        scale = 0.1 if (step // 300) % 2 == 0 else 20.0  # alternate which teacher is the flat one
        adv = torch.randn(8, 10, generator=generator) * scale
        nat = torch.randn(8, 10, generator=generator) * (20.0 / scale)
        seen.append(balance.update(adv, nat))
    taus = [t for pair in seen for t in pair]
    assert min(taus) >= 1.0 and max(taus) <= 10.0
    assert max(taus) == 10.0 and min(taus) == 1.0  # the clipping was reached, both ways


# --- the trainers -----------------------------------------------------------------------------------------------------


def test_balance_lr_drops_tenfold_at_each_milestone() -> None:
    trainer = trainers.create("b-mtard", recipe="defenses/digits-b-mtard.toml", overrides=["lr_milestones=[2, 4]"])
    assert isinstance(trainer, BMTARDTrainer) and trainer.entropy is not None
    rates = []
    for epoch in range(6):
        trainer.set_epoch_rates(epoch)
        rates.append((trainer.balance.lr, trainer.entropy.lr))
    expected = [0.025, 0.025, 0.0025, 0.0025, 0.00025, 0.00025]
    assert [r[0] for r in rates] == pytest.approx(expected)
    assert [r[1] for r in rates] == pytest.approx([e / 25 for e in expected])


def test_balance_state_round_trips() -> None:
    config = trainers.create("b-mtard", recipe="defenses/digits-b-mtard.toml").config
    a, b = BMTARDTrainer(config), BMTARDTrainer(config)
    for loss_adv, loss_nat in _slow_adversarial_losses(30):
        a.balance.update(loss_adv, loss_nat)
        assert a.entropy is not None
        a.entropy.update(FLAT, SHARP)
    state = a.extra_state()
    assert all(isinstance(v, float) for v in state.values())
    b.load_extra_state(state)
    assert b.extra_state() == state


def test_missing_teacher_without_recipe_is_a_clear_error(tmp_path: Path) -> None:
    trainer = trainers.create("mtard", recipe="defenses/digits-mtard.toml",
                              overrides=[f"robust_teacher={tmp_path / 'missing'}", "robust_teacher_recipe=''"])
    with pytest.raises(UserInputError, match="robust_teacher"):
        trainer.fit(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserInputError, match="tau_min"):
        trainers.create("b-mtard", recipe="defenses/digits-b-mtard.toml", overrides=["tau_min=5", "tau_max=2"])


@pytest.fixture(scope="module")
def digits_teachers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A clean and a TRADES digits teacher, trained briefly (enough to differ; quality is not the point here)."""
    root = tmp_path_factory.mktemp("mtard-teachers")
    clean = trainers.create("standard", recipe="defenses/digits-standard.toml",
                            overrides=["epochs=3", "lr_milestones=[2]"]).fit(root / "clean")
    robust = trainers.create("trades", recipe="defenses/digits-trades.toml",
                             overrides=["epochs=2", "attack_steps=3", "lr_milestones=[1]"]).fit(root / "robust")
    return clean, robust


def _overrides(teachers: tuple[Path, Path]) -> list[str]:
    clean, robust = teachers
    return [f"clean_teacher={clean}", f"robust_teacher={robust}", "epochs=3", "attack_steps=3", "val_attack_steps=3",
            "lr_milestones=[2]"]


@pytest.mark.parametrize("method", ["mtard", "b-mtard"])
def test_digits_run_records_the_balance_and_loads(
    method: str, digits_teachers: tuple[Path, Path], tmp_path: Path
) -> None:
    trainer = trainers.create(method, recipe=f"defenses/digits-{method}.toml", overrides=_overrides(digits_teachers))
    assert isinstance(trainer, MTARDTrainer)
    out = trainer.fit(tmp_path / method)
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["recipe"]["method"] == method
    clean, robust = digits_teachers
    assert provenance["parents"] == [
        {"role": "clean_teacher", "path": str(clean), "sha256": checkpoint_sha256(clean)},
        {"role": "robust_teacher", "path": str(robust), "sha256": checkpoint_sha256(robust)},
    ]
    history = provenance["history"]
    assert len(history) == 3
    keys = ["w_adv", "w_nat", "kl_adv", "kl_nat"] + (["tau_adv", "tau_nat"] if method == "b-mtard" else [])
    for record in history:
        for key in keys:
            assert isinstance(record[key], float), key
        assert math.isclose(record["w_adv"] + record["w_nat"], 1.0, abs_tol=1e-9)
        assert 0.0 <= record["w_adv"] <= 1.0
    assert history[0]["w_adv"] != 0.5  # the balance moved
    final = provenance["teacher_balance"]
    assert math.isclose(final["w_adv"] + final["w_nat"], 1.0, abs_tol=1e-9)
    if method == "b-mtard":
        assert all(1.0 <= r[k] <= 10.0 for r in history for k in ("tau_adv", "tau_nat"))
        assert (history[-1]["tau_adv"], history[-1]["tau_nat"]) != (1.0, 1.0)  # the temperatures moved
    else:
        assert (final["tau_adv"], final["tau_nat"]) == (1.0, 1.0)
        assert "tau_adv" not in history[0]
    student = load_model(out)
    assert student.arch == "cnn-tiny"
    assert provenance["selection"]["split"] == "val" and provenance["selection"]["metric"] == "robust"  # digits recipes


def _states_at_epoch_end(trainer: Trainer, into: dict[int, dict[str, float]], stop_after: int | None = None):  # type: ignore[no-untyped-def]
    """An on_epoch_end callback recording the trainer's balance state (extra_state) after each epoch."""

    class Interrupt(KeyboardInterrupt):
        pass

    def record(epoch: int, metrics: dict[str, float]) -> None:
        into[epoch] = dict(trainer.extra_state())
        if epoch == stop_after:
            raise Interrupt

    return record, Interrupt


def _interrupt_and_resume(method: str, overrides: list[str], tmp_path: Path,
                          states: dict[int, dict[str, float]] | None = None) -> Path:
    """Stop a run after epoch 2 (as Ctrl-C would), then continue it with resume=True in a fresh trainer."""
    states = {} if states is None else states
    recipe = f"defenses/digits-{method}.toml"
    first = trainers.create(method, recipe=recipe, overrides=overrides)
    stop, interrupt = _states_at_epoch_end(first, states, stop_after=2)
    with pytest.raises(interrupt):
        first.fit(tmp_path / "resumed", on_epoch_end=stop)
    second = trainers.create(method, recipe=recipe, overrides=overrides)
    record, _ = _states_at_epoch_end(second, states)
    return second.fit(tmp_path / "resumed", resume=True, on_epoch_end=record)


def test_resume_reproduces_an_uninterrupted_run(digits_teachers: tuple[Path, Path], tmp_path: Path) -> None:
    overrides = _overrides(digits_teachers)
    recipe = "defenses/digits-b-mtard.toml"
    straight = trainers.create("b-mtard", recipe=recipe, overrides=overrides).fit(tmp_path / "straight")
    resumed = _interrupt_and_resume("b-mtard", overrides, tmp_path)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    provenance = lambda p: json.loads((p / "config.json").read_text())["provenance"]  # noqa: E731
    assert provenance(straight)["history"] == provenance(resumed)["history"]
    assert provenance(straight)["teacher_balance"] == provenance(resumed)["teacher_balance"]


@pytest.mark.parametrize("method", ["mtard", "b-mtard"])
def test_resume_restores_the_balance_state(method: str, digits_teachers: tuple[Path, Path], tmp_path: Path) -> None:
    """After --resume the balance goes on from where the interrupted run left it: MTARD's teacher weights and first
    losses, and B-MTARD's temperatures too, equal an uninterrupted run's after every epoch (not restarted from
    0.5 / 0.5 and tau = 1 with new first losses)."""
    overrides = _overrides(digits_teachers)
    straight_trainer = trainers.create(method, recipe=f"defenses/digits-{method}.toml", overrides=overrides)
    straight: dict[int, dict[str, float]] = {}
    record, _ = _states_at_epoch_end(straight_trainer, straight)
    straight_trainer.fit(tmp_path / "straight", on_epoch_end=record)
    resumed: dict[int, dict[str, float]] = {}
    _interrupt_and_resume(method, overrides, tmp_path, resumed)
    assert sorted(resumed) == sorted(straight) == [1, 2, 3]
    fresh = trainers.create(method, recipe=f"defenses/digits-{method}.toml", overrides=overrides).extra_state()
    moved = ["w_adv", "w_nat"] + (["tau_adv", "tau_nat"] if method == "b-mtard" else [])
    assert any(straight[2][k] != fresh[k] for k in moved), (straight[2], fresh)  # there is a state to lose
    assert resumed[3] == straight[3]
