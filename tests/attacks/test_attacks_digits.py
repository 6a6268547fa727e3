"""Attack strength and AutoAttack's bookkeeping on the real trained digits model at the digits threat model
(L-inf, eps = 0.125, attacks/digits-linf.toml)."""

from __future__ import annotations

import pytest
import torch
from test_attacks_support import DIGITS_EPS, digits_model, test_points

from robustdistill import attacks
from robustdistill.errors import UserInputError

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def robust_accuracy(name: str, x: torch.Tensor, y: torch.Tensor, **params: object) -> tuple[float, attacks.Attack]:
    atk = attacks.create(name, eps=DIGITS_EPS, seed=0, **params)
    atk(digits_model(), x, y)
    assert atk.last_success is not None
    return 1.0 - float(atk.last_success.float().mean()), atk


@pytest.fixture(scope="module")
def strengths() -> dict[str, float]:
    x, y = test_points(64)
    return {
        "fgsm": robust_accuracy("fgsm", x, y)[0],
        "pgd": robust_accuracy("pgd", x, y, steps=20)[0],
        # official iterations for the gradient attacks; Square shortened (it is the slowest part on a CPU)
        "autoattack": robust_accuracy("autoattack", x, y, n_queries=1000)[0],
    }


def test_pgd_is_at_least_as_strong_as_fgsm(strengths: dict[str, float]) -> None:
    assert strengths["pgd"] <= strengths["fgsm"], strengths


def test_autoattack_is_at_least_as_strong_as_fgsm_and_pgd(strengths: dict[str, float]) -> None:
    assert strengths["autoattack"] <= strengths["fgsm"], strengths
    assert strengths["autoattack"] <= strengths["pgd"], strengths


def test_autoattack_official_defaults_on_a_handful_of_points() -> None:
    x, y = test_points(64)
    # three points PGD-20 breaks and three it does not, so that every component runs at its official setting
    pgd = attacks.create("pgd", eps=DIGITS_EPS, steps=20, seed=0)
    pgd(digits_model(), x, y)
    pick = torch.cat([pgd.last_success.nonzero().flatten()[:3], (~pgd.last_success).nonzero().flatten()[:3]])
    x, y = x[pick], y[pick]
    atk = attacks.create("autoattack", eps=DIGITS_EPS, seed=0)
    assert (atk.steps, atk.n_queries, atk.n_target_classes, atk.attacks) == (100, 5000, 9, COMPONENTS)
    x_adv = atk(digits_model(), x, y)

    assert (x_adv - x).abs().max() <= DIGITS_EPS + 1e-6
    assert atk.last_broken_by is not None and atk.last_accuracy is not None and atk.last_success is not None
    assert len(atk.last_broken_by) == len(y)
    with torch.no_grad():
        clean_correct = digits_model()(x).argmax(1) == y
    for i, who in enumerate(atk.last_broken_by):
        assert who in {None, "clean", *COMPONENTS}
        assert (who is None) == (not bool(atk.last_success[i]))  # robust exactly where nothing broke it
        assert (who == "clean") == (not bool(clean_correct[i]))
        if who in COMPONENTS:  # points broken by an attack keep that attack's example: x_adv differs from x
            assert not torch.equal(x_adv[i], x[i])
        else:
            assert torch.equal(x_adv[i], x[i])
    # robust accuracy after each stage, like the official robust_accuracy_dict, never rises
    stages = list(atk.last_accuracy.values())
    assert list(atk.last_accuracy) == ["clean", *COMPONENTS]
    assert stages == sorted(stages, reverse=True)
    assert stages[-1] == pytest.approx(1.0 - float(atk.last_success.float().mean()))


def test_autoattack_runs_each_component_only_on_points_still_robust() -> None:
    """AutoAttack's first stage with seed s is exactly APGD-CE with seed s; later stages only add broken points."""
    x, y = test_points(48)
    model = digits_model()
    apgd = attacks.create("apgd-ce", eps=DIGITS_EPS, steps=10, seed=3)
    x_apgd = apgd(model, x, y)
    aa = attacks.create("autoattack", eps=DIGITS_EPS, steps=10, n_queries=50, attacks=["apgd-ce", "square"], seed=3)
    x_aa = aa(model, x, y)
    by_apgd = torch.tensor([who == "apgd-ce" for who in aa.last_broken_by])
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
    assert torch.equal(by_apgd, apgd.last_success & ~clean_wrong)
    assert torch.equal(x_aa[by_apgd], x_apgd[by_apgd])
    assert bool((aa.last_success | ~apgd.last_success).all())


class FirstClasses(torch.nn.Module):
    """The trained digits model restricted to its first k classes (a real k-class model)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.model, self.k = digits_model(), k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, : self.k]


def points_of_first_classes(k: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = test_points(120)
    keep = y < k
    return x[keep][:n], y[keep][:n]


def test_number_of_classes_comes_from_the_model() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model = FirstClasses(5).eval()
    x, y = points_of_first_classes(5)
    for name in ("apgd-t", "fab-t", "autoattack"):
        extra = {"n_queries": 20} if name == "autoattack" else {}
        atk = attacks.create(name, eps=DIGITS_EPS, steps=5, n_target_classes=9, seed=0, **extra)
        assert atk(model, x, y).shape == x.shape
    # torchattacks' default n_classes=10 targets classes a 5-class model does not have
    with pytest.raises(IndexError):
        torchattacks.APGDT(model, eps=DIGITS_EPS, steps=5)(x, y)


def test_autoattack_skips_apgd_t_below_four_classes_and_apgd_t_says_why() -> None:
    model = FirstClasses(3).eval()
    x, y = points_of_first_classes(3)
    aa = attacks.create("autoattack", eps=DIGITS_EPS, steps=5, n_queries=20, seed=0)
    aa(model, x, y)
    assert "apgd-t" not in aa.last_accuracy
    with pytest.raises(UserInputError, match="4 classes"):
        attacks.create("apgd-t", eps=DIGITS_EPS, steps=5)(model, x, y)


class ModeRecorder(torch.nn.Module):
    """Records the mode of every forward pass (torchattacks' __call__ would force eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.model, self.seen = digits_model(), set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(self.training)
        return self.model(x)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square", "autoattack"])
def test_model_stays_in_the_mode_the_base_class_set(name: str) -> None:
    x, y = test_points(8)
    recorder = ModeRecorder().eval()
    fast: dict[str, int] = {} if name == "square" else {"steps": 3}
    if name in ("square", "autoattack"):
        fast["n_queries"] = 10
    try:
        attacks.create(name, eps=DIGITS_EPS, **fast)(recorder, x, y, mode="train")
        assert recorder.seen == {True}
        assert not recorder.training  # and the base class restored the caller's mode afterwards
        recorder.seen.clear()
        attacks.create(name, eps=DIGITS_EPS, **fast)(recorder, x, y, mode="eval")
        assert recorder.seen == {False}
    finally:
        digits_model().eval()
