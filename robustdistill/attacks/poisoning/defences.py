"""Training-data filters against bias poisoning - the ones Chaudhari et al. 2025 found inadequate - and how many
poisoned examples each catches at what cost in clean examples.

- Perplexity filtering: a reference LM's mean response-token loss per example (:func:`perplexity_scores`); a
  poisoned response is text the reference finds unusual, so a high loss is suspicious. Thresholds are set on the
  CLEAN examples' scores for a target false-positive rate (:func:`catch_rates`), the way a defender who can afford
  to drop, say, 1% of good data would set one.
- A detector over the training data (:func:`detector_flags`, :func:`flag_rates`): e.g. the payload-blind
  :func:`~robustdistill.attacks.poisoning.detectors.generic_detector`.

:func:`filter_dataset` drops what a filter flagged, so the pipeline can retrain on what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from robustdistill.attacks.poisoning.detectors import Detector
from robustdistill.attacks.privacy.lm_scores import response_token_stats
from robustdistill.attacks.privacy.metrics import membership_metrics
from robustdistill.data.instructions import InstructionDataset
from robustdistill.errors import UserInputError
from robustdistill.models.language import LanguageModel
from robustdistill.stats import wilson

__all__ = ["DEFAULT_FPRS", "catch_rates", "detector_flags", "filter_dataset", "flag_rates", "perplexity_scores"]

DEFAULT_FPRS: tuple[float, ...] = (0.01, 0.05, 0.10)


def perplexity_scores(reference_lm: LanguageModel, dataset: InstructionDataset, batch_size: int = 16) -> np.ndarray:
    """Per example, the reference LM's mean negative log-likelihood of the response tokens (the log-perplexity);
    higher = more suspicious."""
    stats = response_token_stats(reference_lm, dataset, batch_size, field="reference_lm")
    return np.asarray([s.nll for s in stats], dtype=np.float64)


def detector_flags(detector: Detector, dataset: InstructionDataset) -> np.ndarray:
    """One bool per example: does ``detector`` flag its response?"""
    flags = detector.detect([e.prompt for e in dataset], [e.response for e in dataset])
    return np.asarray(flags, dtype=bool)


def _labels(values: Any, is_poison: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(is_poison, dtype=bool).reshape(-1)
    array = np.asarray(values).reshape(-1)
    if array.shape != labels.shape:
        raise UserInputError(name, f"{array.size} values for {labels.size} examples", "give one per example")
    if not labels.any() or labels.all():
        raise UserInputError("is_poison", f"needs poisoned and clean examples, got {int(labels.sum())} poisoned of "
                             f"{labels.size}", "score the whole poisoned training set")
    return array, labels


def catch_rates(scores: Any, is_poison: Any, fprs: Sequence[float] = DEFAULT_FPRS) -> list[dict[str, Any]]:
    """Per target FPR: flag the examples scoring ABOVE the (1 - fpr) quantile of the clean scores (so at most that
    share of clean examples is flagged; the achieved rate is reported), and count the poisoned ones caught. Each
    row also holds the AUC of the scores as a poison detector, with its 95% interval. Ties at the threshold are not
    flagged: a score that cannot tell poison from clean catches nothing."""
    values, labels = _labels(scores, is_poison, "scores")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise UserInputError("scores", "are not all finite", "check the reference model")
    clean, poison = values[~labels], values[labels]
    metrics = membership_metrics(values, labels, fprs=())
    rows = []
    for fpr in fprs:
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 <= fpr < 1:
            raise UserInputError("fprs", f"{fpr!r} is not a false-positive rate in [0, 1)", "e.g. 0.01")
        threshold = float(np.quantile(clean, 1 - fpr, method="higher"))
        caught, flagged = int((poison > threshold).sum()), int((clean > threshold).sum())
        rows.append({
            "target_fpr": float(fpr), "threshold": threshold,
            "caught": caught, "n_poison": int(poison.size), "tpr": caught / poison.size,
            "tpr_ci95": wilson(caught, int(poison.size)),
            "flagged_clean": flagged, "n_clean": int(clean.size), "fpr": flagged / clean.size,
            "auc": metrics.auc, "auc_ci95": metrics.auc_ci95,
        })
    return rows


def flag_rates(flags: Any, is_poison: Any) -> dict[str, Any]:
    """A binary filter's catch: poisoned examples flagged (TPR, with its Wilson interval) and clean ones (FPR)."""
    flags, labels = _labels(flags, is_poison, "flags")
    flags = flags.astype(bool)
    caught, flagged = int((flags & labels).sum()), int((flags & ~labels).sum())
    n_poison, n_clean = int(labels.sum()), int((~labels).sum())
    return {"caught": caught, "n_poison": n_poison, "tpr": caught / n_poison, "tpr_ci95": wilson(caught, n_poison),
            "flagged_clean": flagged, "n_clean": n_clean, "fpr": flagged / n_clean}


def filter_dataset(dataset: InstructionDataset, flags: Any) -> tuple[InstructionDataset, tuple[str, ...]]:
    """(the examples not flagged, in order; the ids removed)."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    if flags.size != len(dataset):
        raise UserInputError("flags", f"{flags.size} flags for {len(dataset)} examples", "give one per example")
    if flags.all():
        raise UserInputError("flags", "every example is flagged: nothing is left to train on",
                             "use a less aggressive filter")
    removed = tuple(i for i, flagged in zip(dataset.ids, flags) if flagged)
    return (dataset if not removed else dataset.select(i for i, f in zip(dataset.ids, flags) if not f)), removed
