"""Amplification of a bias from teacher to student: the student's bias rate over the teacher's, on the SAME prompts.

Inputs are per-prompt bias rates (the fraction of a prompt's sampled responses that show the bias; a 0/1 array
for one greedy response per prompt). The point estimate is mean(student) / mean(teacher) (Chaudhari et al. 2025's
"student rate / teacher rate"); its 95% interval is a paired percentile bootstrap over prompts, which keeps the
correlation between the two models' answers to one prompt (:func:`robustdistill.stats.bootstrap_ratio_ci`; resamples
whose teacher rate is 0 have no ratio and are left out). The difference of rates, student minus teacher, comes with
its own paired bootstrap interval: unlike the ratio it exists when the teacher never shows the bias.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from robustdistill.errors import UserInputError
from robustdistill.limits import check_int, check_seed
from robustdistill.stats import bootstrap_ratio_ci

__all__ = ["Amplification", "amplification"]


@dataclass(frozen=True)
class Amplification:
    student_rate: float
    teacher_rate: float
    ratio: float | None  # None when the teacher's rate is 0 (see note)
    ratio_ci95: list[float] | None
    difference: float
    difference_ci95: list[float]
    n_prompts: int
    resamples: int
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rates(values: Any, field: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise UserInputError(field, "has no prompts", "give one bias rate per prompt")
    if not np.isfinite(array).all() or (array < 0).any() or (array > 1).any():
        raise UserInputError(field, "must be per-prompt bias rates in [0, 1]", "e.g. the fraction of samples flagged")
    return array


def amplification(student_hits: Any, teacher_hits: Any, seed: int, resamples: int = 2000) -> Amplification:
    """Student-over-teacher bias rate on the same prompts, with paired bootstrap 95% intervals (module docstring)."""
    student, teacher = _rates(student_hits, "student_hits"), _rates(teacher_hits, "teacher_hits")
    if student.size != teacher.size:
        raise UserInputError("student_hits", f"{student.size} student rates for {teacher.size} teacher rates",
                             "score both models on the same prompts")
    seed = check_seed("seed", seed)
    resamples = check_int("resamples", resamples, 100, 10**6, "e.g. 2000")
    student_rate, teacher_rate = float(student.mean()), float(teacher.mean())
    # The same resampled prompt sets as the ratio's interval (one generator, one seed): both intervals are paired.
    idx = np.random.default_rng(seed).integers(0, student.size, size=(resamples, student.size))
    differences = student[idx].mean(axis=1) - teacher[idx].mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    difference = student_rate - teacher_rate
    ratio = student_rate / teacher_rate if teacher_rate > 0 else None
    note = None if ratio is not None else \
        "the teacher never shows the bias on these prompts: the ratio is undefined; compare the difference of rates"
    return Amplification(
        student_rate=student_rate, teacher_rate=teacher_rate, ratio=ratio,
        ratio_ci95=bootstrap_ratio_ci(student, teacher, seed=seed, resamples=resamples) if ratio is not None else None,
        difference=difference, difference_ci95=[float(min(low, difference)), float(max(high, difference))],
        n_prompts=int(student.size), resamples=resamples, note=note)
