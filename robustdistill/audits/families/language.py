"""The language-model family: a causal LM with its tokenizer and chat template (robustdistill.models.LanguageModel).

It recognises its models, so that a suite of classifier probes given a language model is refused naming the probe and
the role; its probes, evaluation data (prompts, targets, judges) and derived rows come with the language-model
pipelines.
"""

from __future__ import annotations

import sys
from typing import Any

from robustdistill.audits.families.base import FAMILIES, ModelFamily


@FAMILIES.register("language-model")
class LanguageModelFamily(ModelFamily):
    name = "language-model"
    title = "a language model"

    def accepts(self, model: Any) -> bool:
        # Only loaded when such a model exists: checking costs no transformers import.
        module = sys.modules.get("robustdistill.models.language")
        return module is not None and isinstance(model, module.LanguageModel)
