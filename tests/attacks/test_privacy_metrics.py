"""Membership-inference metrics (robustdistill.attacks.privacy.metrics) on examples worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.attacks.privacy.metrics import (auc_interval, balanced_accuracy, membership_metrics,
                                                   tpr_at_fpr)
from robustdistill.errors import UserInputError

# 1000 non-members with the distinct scores 0, 1, ..., 999, and 10 members.
NONMEMBERS = np.arange(1000, dtype=np.float64)
MEMBERS = np.array([2000.0, 1500.0, 999.5, 999.0, 998.5, 998.0, 997.5, 500.0, 10.0, -5.0])


def labelled(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([members, nonmembers])
    is_member = np.concatenate([np.ones(len(members), bool), np.zeros(len(nonmembers), bool)])
    return scores, is_member


def test_tpr_at_0_1pct_fpr_by_hand() -> None:
    # 0.1% of 1000 non-members allows exactly one false positive. A threshold "score >= t" admits at most one
    # non-member only if t > 998 (the second-highest non-member score), so the best threshold catches exactly the
    # members scoring strictly above 998: 2000, 1500, 999.5, 999 (tied with the allowed false positive, 999: still
    # admitted, since that threshold has FP = 1) and 998.5 -> 5 of 10. The member at 998 ties with the SECOND
    # non-member: any threshold admitting it admits two non-members (FPR 0.2%), so it is not counted.
    scores, is_member = labelled(MEMBERS, NONMEMBERS)
    result = tpr_at_fpr(scores, is_member, 0.001)
    assert result.resolvable and result.note is None
    assert result.false_positives_allowed == 1
    assert result.value == pytest.approx(0.5, abs=1e-12)
    assert result.ci95 is not None and result.ci95[0] < 0.5 < result.ci95[1]


def test_tpr_at_1pct_fpr_by_hand() -> None:
    # 1% allows 10 false positives (the non-members 990..999), so t may go down to just above 989: every member
    # above 989 counts: 2000, 1500, 999.5, 999, 998.5, 998, 997.5 -> 7 of 10 (500, 10 and -5 are below).
    scores, is_member = labelled(MEMBERS, NONMEMBERS)
    result = tpr_at_fpr(scores, is_member, 0.01)
    assert result.false_positives_allowed == 10
    assert result.value == pytest.approx(0.7, abs=1e-12)


def test_tpr_at_fpr_is_resolvable_from_exactly_1_over_fpr_nonmembers() -> None:
    # 999 non-members at 0.1%: 0.999 allowed false positives, i.e. none: the number would be TPR at FPR 0.
    scores, is_member = labelled(MEMBERS, NONMEMBERS[1:])
    result = tpr_at_fpr(scores, is_member, 0.001)
    assert not result.resolvable
    assert result.value is None and result.ci95 is None and result.false_positives_allowed == 0
    assert result.note is not None and "999" in result.note and "1000" in result.note
    # the same data at 1% is resolvable (9 false positives allowed)
    assert tpr_at_fpr(scores, is_member, 0.01).resolvable
    # and exactly 1000 non-members is enough at 0.1%
    assert tpr_at_fpr(*labelled(MEMBERS, NONMEMBERS), 0.001).resolvable


def test_ties_between_members_and_nonmembers() -> None:
    # Everything tied: no threshold separates anything; the only thresholds are "nobody" and "everybody".
    scores = np.zeros(200)
    is_member = np.arange(200) < 50
    assert tpr_at_fpr(scores, is_member, 0.01).value == 0.0
    metrics = membership_metrics(scores, is_member)
    assert metrics.auc == pytest.approx(0.5)
    assert metrics.balanced_accuracy == pytest.approx(0.5)
    # Members tied with the 1000 non-members' top score 999 at 0.1% FPR (one false positive allowed): counted.
    scores, is_member = labelled(np.array([999.0, 999.0, 0.5]), NONMEMBERS)
    assert tpr_at_fpr(scores, is_member, 0.001).value == pytest.approx(2 / 3)


# A tiny example: members 4, 5, 6; non-members 1, 2, 4, 7.
TINY_MEMBERS = np.array([4.0, 5.0, 6.0])
TINY_NONMEMBERS = np.array([1.0, 2.0, 4.0, 7.0])


def test_balanced_accuracy_by_hand() -> None:
    # Thresholds "score >= t": t=7: TPR 0, FPR 1/4 -> (0 + 3/4)/2 = .375; t=6: (1/3 + 3/4)/2 = .542;
    # t=5: (2/3 + 3/4)/2 = .708; t=4: TPR 1, FPR 2/4 -> (1 + 1/2)/2 = .75; t=2: (1 + 1/4)/2 = .625;
    # t=1: .5; t=+inf: .5. Best: 0.75.
    scores, is_member = labelled(TINY_MEMBERS, TINY_NONMEMBERS)
    assert balanced_accuracy(scores, is_member) == pytest.approx(0.75)
    assert membership_metrics(scores, is_member).balanced_accuracy == pytest.approx(0.75)


def test_auc_is_the_mann_whitney_statistic() -> None:
    # P(member score > non-member score) + P(tie) / 2 over the 3 x 4 pairs: member 4 beats 1 and 2 and ties 4
    # (2.5), 5 beats 1, 2, 4 (3), 6 beats 1, 2, 4 (3); none beats 7. (2.5 + 3 + 3) / 12 = 8.5 / 12.
    scores, is_member = labelled(TINY_MEMBERS, TINY_NONMEMBERS)
    metrics = membership_metrics(scores, is_member)
    assert metrics.auc == pytest.approx(8.5 / 12)
    assert (metrics.n_members, metrics.n_nonmembers) == (3, 4)
    # the ROC ends are (0, 0) and (1, 1); both coordinates non-decreasing
    assert metrics.fpr[0] == 0 and metrics.tpr[0] == 0 and metrics.fpr[-1] == 1 and metrics.tpr[-1] == 1
    assert np.all(np.diff(metrics.fpr) >= 0) and np.all(np.diff(metrics.tpr) >= 0)
    # a score that orders points the other way gives 1 - AUC
    assert membership_metrics(-scores, is_member).auc == pytest.approx(1 - 8.5 / 12)


def test_hanley_mcneil_interval_by_hand() -> None:
    # A = 0.8, 50 members, 100 non-members: Q1 = A / (2 - A) = 0.6667, Q2 = 2 A^2 / (1 + A) = 0.7111;
    # var = (A (1 - A) + 49 (Q1 - A^2) + 99 (Q2 - A^2)) / (50 * 100) = (0.16 + 1.30667 + 7.04) / 5000 = 0.0017013,
    # SE = 0.041247, 1.96 SE = 0.080843 -> [0.71916, 0.88084]. (Swapping the counts would give SE 0.03545.)
    low, high = auc_interval(0.8, 50, 100)
    assert low == pytest.approx(0.71916, abs=1e-4) and high == pytest.approx(0.88084, abs=1e-4)


@pytest.mark.parametrize("auc", [0.5, 0.62, 0.9])
def test_auc_interval_contains_the_auc_and_shrinks_with_n(auc: float) -> None:
    widths = []
    for n in (20, 200, 2000):
        low, high = auc_interval(auc, n, n)
        assert 0.0 <= low <= auc <= high <= 1.0
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0
    # the interval of a measured AUC, as membership_metrics reports it
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.5, 1, 300), rng.normal(0, 1, 300)])
    metrics = membership_metrics(scores, np.arange(600) < 300)
    assert metrics.auc_ci95[0] < metrics.auc < metrics.auc_ci95[1]


@pytest.mark.parametrize("function", [tpr_at_fpr, balanced_accuracy, membership_metrics])
def test_bad_input(function: object) -> None:
    call = (lambda s, m: function(s, m, 0.01)) if function is tpr_at_fpr else function  # type: ignore[operator]
    scores = np.linspace(0, 1, 10)
    with pytest.raises(UserInputError) as info:
        call(scores, np.zeros(10, bool))  # no members
    assert info.value.field == "ground_truth" and "0 members" in info.value.problem
    with pytest.raises(UserInputError):
        call(scores, np.ones(10, bool))  # no non-members
    for bad in (np.nan, np.inf, -np.inf):
        broken = scores.copy()
        broken[3] = bad
        with pytest.raises(ValueError, match="finite"):
            call(broken, np.arange(10) < 5)
    with pytest.raises(ValueError):
        call(scores, np.arange(9) < 5)  # one label short


FPRS = (0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def brute_force_tpr(scores: np.ndarray, is_member: np.ndarray, fpr: float) -> float:
    """The definition: the best TPR over thresholds "score >= t" with at most floor(fpr * n) false positives."""
    allowed = math.floor(fpr * (~is_member).sum() + 1e-9)
    best = 0.0
    for t in np.unique(scores):
        above = scores >= t
        if (above & ~is_member).sum() <= allowed:
            best = max(best, (above & is_member).sum() / is_member.sum())
    return best


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-20, 20), st.booleans()), min_size=2, max_size=300),
)
def test_tpr_at_fpr_properties(data: list[tuple[int, bool]]) -> None:
    scores = np.array([s for s, _ in data], dtype=np.float64) / 4  # small integer grid: many ties
    is_member = np.array([m for _, m in data])
    if is_member.all() or not is_member.any():
        is_member[0] = not is_member[0]
    previous = -1.0
    for fpr in FPRS:
        result = tpr_at_fpr(scores, is_member, fpr)
        if not result.resolvable:
            assert result.value is None and (~is_member).sum() * fpr < 1
            continue
        assert result.value is not None and result.ci95 is not None
        assert 0.0 <= result.value <= 1.0
        assert result.value >= previous  # monotone in the allowed false-positive rate
        assert result.ci95[0] <= result.value <= result.ci95[1]
        assert result.value == pytest.approx(brute_force_tpr(scores, is_member, fpr), abs=1e-12)
        previous = result.value
