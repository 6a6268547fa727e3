"""The language-model family: a causal LM with its tokenizer and chat template (robustdistill.models.LanguageModel).

It recognises its models, so that a suite of classifier probes given a language model is refused naming the probe and
the role; its probes, evaluation data (prompts, targets, judges) and derived rows come with the language-model
pipelines.
"""

from __future__ import annotations

from typing import Any

from robustdistill.audits.families.base import FAMILIES, ModelFamily, instance_if_loaded


@FAMILIES.register("language-model")
class LanguageModelFamily(ModelFamily):
    name = "language-model"
    title = "a language model"

    def accepts(self, model: Any) -> bool:
        return instance_if_loaded(model, "robustdistill.models.language", "LanguageModel")
