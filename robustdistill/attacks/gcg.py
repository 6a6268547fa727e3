"""``robustdistill.attacks.gcg``: the GCG suffix attack (Zou et al. 2023); the code lives in attacks/llm/."""

from robustdistill.attacks.llm import GCGConfig, GCGResult, Outcome, evaluate_suffix, gcg

__all__ = ["GCGConfig", "GCGResult", "Outcome", "evaluate_suffix", "gcg"]
