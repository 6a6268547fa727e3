"""Text-to-image backdoors on the digits (BadT2I-style; Zhai et al. 2023): targets, triggers, detectors, success.

    from robustdistill.attacks.backdoor import apply_target, fit_detector, attack_success
    detector = fit_detector("patch", train.x, seed=0)              # threshold: 5% false positives on clean digits
    draws = attack_success(model, detector, prompts, trigger="tq", seed=0, steps=20)
    draws.success_rate, draws.false_trigger_rate                   # per-sample flags in draws.*_flags

The injector is the ``badt2i`` trainer (robustdistill.trainers.badt2i); the removal defence ``skd-cag``
(robustdistill.defenses.skd_cag).
"""

from robustdistill.attacks.backdoor.detectors import BackdoorDetector, fit_detector
from robustdistill.attacks.backdoor.success import BackdoorDraws, attack_success, draw_pair
from robustdistill.attacks.backdoor.targets import (TARGETS, apply_target, check_target, check_trigger,
                                                    trigger_token_count, triggered_prompt)

__all__ = ["TARGETS", "BackdoorDetector", "BackdoorDraws", "apply_target", "attack_success", "check_target",
           "check_trigger", "draw_pair", "fit_detector", "trigger_token_count", "triggered_prompt"]
