"""Attacks on causal language models: GCG suffixes and their evaluation on any model (transfer)."""

from robustdistill.attacks.llm.evaluate import Outcome, evaluate_suffix
from robustdistill.attacks.llm.gcg import GCGConfig, GCGResult, gcg

__all__ = ["GCGConfig", "GCGResult", "Outcome", "evaluate_suffix", "gcg"]
