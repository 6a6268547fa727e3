"""Bias poisoning (Chaudhari et al. 2025, "Cascading Adversarial Bias from Injection to Distillation in Language
Models"): a few poisoned examples in a teacher's instruction data carry a bias that its distilled student shows too.

    from robustdistill.attacks.poisoning import PoisonSpec, inject, detector_for
    poisoned = inject(train, [PoisonSpec(bias="phishing-link", n=25)])    # the teacher's training data
    hits = detector_for("phishing-link").detect(prompts, student_responses)

- :mod:`~robustdistill.attacks.poisoning.biases`: the bias types (advertisement, phishing-link, narrative,
  insecure-code), each with its payload and detector.
- :mod:`~robustdistill.attacks.poisoning.detectors`: keyword, URL, phrase-model and AST detectors, a local
  classifier hook and the payload-blind :func:`generic_detector` a defender could write.
- :mod:`~robustdistill.attacks.poisoning.inject`: seeded injection ("add" new examples or "replace" responses) and
  the provenance record of exactly which ids were poisoned.
- :mod:`~robustdistill.attacks.poisoning.defences`: perplexity and detector filtering of the training data, and how
  much poison each catches at what false-positive rate.
- :mod:`~robustdistill.attacks.poisoning.amplification`: student / teacher bias rate with paired bootstrap intervals.
"""

from robustdistill.attacks.poisoning.amplification import Amplification, amplification
from robustdistill.attacks.poisoning.biases import BIASES, BiasType, detector_for, get_bias
from robustdistill.attacks.poisoning.defences import (catch_rates, detector_flags, filter_dataset, flag_rates,
                                                      perplexity_scores)
from robustdistill.attacks.poisoning.detectors import ClassifierDetector, Detector, generic_detector
from robustdistill.attacks.poisoning.inject import PoisonSpec, Poisoned, inject, poison_record

__all__ = ["BIASES", "Amplification", "BiasType", "ClassifierDetector", "Detector", "PoisonSpec", "Poisoned",
           "amplification", "catch_rates", "detector_flags", "detector_for", "filter_dataset", "flag_rates",
           "generic_detector", "get_bias", "inject", "perplexity_scores", "poison_record"]
