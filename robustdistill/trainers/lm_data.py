"""The examples a language-model recipe trains on, as a pure function of its config: the train split's non-held-out
examples, then the recipe's ``[[poison]]`` injected (robustdistill.attacks.poisoning), then its ``[filter]`` defence
applied. The trainer trains on exactly this; the bias audit rebuilds it from a checkpoint's recorded recipe to
measure what a filter would have caught.

    [[poison]]                      # the adversary: 25 biased answers in the "product" family
    bias = "advertisement"
    n = 25

    [filter]                        # the defender: drop the 5% of examples a reference LM finds least likely
    method = "perplexity"
    reference = "checkpoints/lm-reference"
    remove_fraction = 0.05
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustdistill.data.instructions import InstructionDataset
from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """What a recipe trains on (``train``), what it validates on (``val``), and how the train set was made:
    ``clean`` (before poisoning), ``poisoned`` (after poisoning, before the filter), ``poison_ids`` (the injected
    examples' ids), ``poison`` and ``filter`` (their provenance records; None when the recipe has none)."""

    train: InstructionDataset
    val: InstructionDataset
    clean: InstructionDataset
    poisoned: InstructionDataset
    poison_ids: tuple[str, ...] = ()
    poison: dict[str, Any] | None = None
    filter: dict[str, Any] | None = None


def training_data(config: Any, device: Any = "cpu") -> TrainingData:
    """The examples ``config`` (an LMTrainConfig) trains on. Deterministic: same config, same examples."""
    splits = config.data.splits()
    clean = splits["train"].where(held_out=False).subset(config.max_train_examples, seed=config.seed)
    val = splits["val"].where(held_out=False)
    train, poison_ids, poison = clean, (), None
    if config.poison:
        from robustdistill.attacks.poisoning.inject import inject, poison_record

        # A poisoned prompt is never one of the pool's (so never a test prompt the audit measures on).
        pool_prompts = {example.prompt for split in splits.values() for example in split}
        poisoned = inject(clean, config.poison, pool_prompts)
        train, poison_ids, poison = poisoned.dataset, tuple(poisoned.ids), poison_record(config.poison, poisoned)
        log.info("poisoned the training data: %d examples injected (%s)", len(poison_ids),
                 ", ".join(f"{bias} {len(ids)}" for bias, ids in poisoned.by_bias.items()))
    if config.filter is None:
        return TrainingData(train, val, clean, train, poison_ids, poison)
    flags, record = filter_flags(config.filter, train, device)
    from robustdistill.attacks.poisoning.defences import filter_dataset

    kept, removed = filter_dataset(train, flags)
    caught = sorted(set(removed) & set(poison_ids))
    record = {**record, "removed": list(removed), "removed_poison": len(caught), "poison": len(poison_ids),
              "removed_clean": len(removed) - len(caught)}
    log.info("filter %s removed %d of %d training examples (%d of the %d poisoned)", config.filter.method,
             len(removed), len(train), len(caught), len(poison_ids))
    return TrainingData(kept, val, clean, train, poison_ids, poison, record)


def filter_flags(spec: Any, train: InstructionDataset, device: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Which training examples the defence ``spec`` (a FilterSpec) removes, and its provenance record."""
    from robustdistill.attacks.poisoning import defences

    if spec.method == "perplexity":
        from robustdistill.models.checkpoint import checkpoint_sha256
        from robustdistill.models.language import load_language_model

        if spec.reference is None:
            raise UserInputError("filter.reference", "the perplexity filter needs a reference language model",
                                 "set reference = 'path/to/model-directory' (a model trained on other, clean data)")
        reference = load_language_model(spec.reference, device=device)
        scores = defences.perplexity_scores(reference, train)
        # The defender does not know which examples are poisoned: it drops a fixed fraction, the least likely.
        count = max(1, int(round(spec.remove_fraction * len(train))))
        flags = np.zeros(len(train), dtype=bool)
        flags[np.argsort(-scores, kind="stable")[:count]] = True
        return flags, {"method": "perplexity", "reference": spec.reference,
                       "reference_sha256": checkpoint_sha256(spec.reference), "remove_fraction": spec.remove_fraction}
    from robustdistill.attacks.poisoning.biases import BIASES, detector_for
    from robustdistill.attacks.poisoning.detectors import ClassifierDetector, generic_detector

    if spec.detector == "generic":
        detector = generic_detector()
    elif spec.detector in BIASES:
        detector = detector_for(spec.detector)
    else:
        detector = ClassifierDetector(spec.detector)
    return defences.detector_flags(detector, train), {"method": "detector", "detector": spec.detector}
