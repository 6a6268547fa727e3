"""Membership-inference metrics from per-point scores (higher score = "more likely a member").

AUC and the ROC come from scikit-learn; the AUC's 95% interval is Hanley and McNeil's (1982). Two metrics need
care:

- Balanced accuracy is the best (TPR + TNR) / 2 over all thresholds, the threshold chosen on the evaluated points
  themselves, as in Carlini et al. 2022 (an optimistic, attack-favouring number; the low-FPR TPR is the honest one).
- TPR at a fixed FPR (Carlini et al. 2022: "TPR at 0.1% FPR"): the largest TPR among thresholds whose FPR is at most
  the target. It is only resolvable when the non-members allow at least one false positive at that rate
  (``n_nonmembers * fpr >= 1``); with fewer, the only admissible threshold is FPR = 0 and the number says nothing
  about that rate, so it is reported as not resolvable instead of a misleading value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from robustdistill.stats import Z95, wilson
from robustdistill.errors import UserInputError

LOW_FPRS: tuple[float, ...] = (0.001, 0.01)
TPR_METRICS: dict[float, str] = {0.001: "tpr_at_0_1pct_fpr", 0.01: "tpr_at_1pct_fpr"}


@dataclass(frozen=True)
class TprAtFpr:
    fpr: float
    value: float | None  # None when not resolvable
    ci95: list[float] | None
    false_positives_allowed: int
    resolvable: bool
    note: str | None


@dataclass(frozen=True)
class MembershipMetrics:
    auc: float
    auc_ci95: list[float]
    balanced_accuracy: float
    tpr_at: dict[float, TprAtFpr]
    n_members: int
    n_nonmembers: int
    fpr: np.ndarray
    tpr: np.ndarray


def check_labels(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(is_member, dtype=bool).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores but {labels.shape[0]} membership labels")
    if not labels.any() or labels.all():
        raise UserInputError("ground_truth", f"needs both members and non-members, got {int(labels.sum())} members "
                             f"of {labels.size} points", "give non-members too (e.g. a held-out split)")
    if not np.isfinite(scores).all():
        raise ValueError("membership scores must be finite")
    return scores, labels


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float) -> TprAtFpr:
    """The largest TPR over thresholds ``score >= t`` whose FPR is at most ``fpr`` (see the module docstring)."""
    scores, labels = check_labels(scores, is_member)
    n_neg, n_pos = int((~labels).sum()), int(labels.sum())
    allowed = int(np.floor(fpr * n_neg + 1e-9))
    if allowed < 1:
        need = int(np.ceil(1 / fpr - 1e-9))
        note = (f"not resolvable: TPR at {100 * fpr:g}% FPR needs at least {need} non-members, there are {n_neg}")
        return TprAtFpr(fpr, None, None, allowed, False, note)
    curve_fpr, curve_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    value = float(curve_tpr[curve_fpr <= fpr + 1e-12].max())
    ci = wilson(int(round(value * n_pos)), n_pos)
    return TprAtFpr(fpr, value, ci, allowed, True, None)


def auc_interval(auc: float, n_members: int, n_nonmembers: int, z: float = Z95) -> list[float]:
    """95% interval of an AUC by the Hanley and McNeil (1982) standard error: how far from 0.5 is noise."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_members - 1) * (q1 - auc * auc) + (n_nonmembers - 1) * (q2 - auc * auc))
    se = math.sqrt(max(variance, 0.0) / (n_members * n_nonmembers))
    return [max(0.0, auc - z * se), min(1.0, auc + z * se)]


def balanced_accuracy(scores: np.ndarray, is_member: np.ndarray) -> float:
    scores, labels = check_labels(scores, is_member)
    curve_fpr, curve_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.max((curve_tpr + 1 - curve_fpr) / 2))


def membership_metrics(scores: np.ndarray, is_member: np.ndarray, fprs: tuple[float, ...] = LOW_FPRS) -> MembershipMetrics:
    scores, labels = check_labels(scores, is_member)
    curve_fpr, curve_tpr, _ = roc_curve(labels, scores)
    auc = float(roc_auc_score(labels, scores))
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return MembershipMetrics(
        auc=auc,
        auc_ci95=auc_interval(auc, n_pos, n_neg),
        balanced_accuracy=balanced_accuracy(scores, labels),
        tpr_at={f: tpr_at_fpr(scores, labels, f) for f in fprs},
        n_members=n_pos,
        n_nonmembers=n_neg,
        fpr=curve_fpr,
        tpr=curve_tpr,
    )
