"""The language-model family: a causal LM with its tokenizer and chat template (robustdistill.models.LanguageModel).

Evaluation data is instruction data (``[data] kind = "instructions"`` for the procedural generator, or an
Alpaca/ShareGPT/Hugging Face file; robustdistill.data.instruction_spec): the suite's split of it, ``samples``
examples drawn with the suite's seed. Probes pick what they need from it: the harmful-request family for refusal and
jailbreak probes, the benign families for task accuracy, and for membership inference the examples a model was
fine-tuned on (its recorded member ids, resolved against the same pool) against the split's examples as
non-members. Teacher and student need not share a tokenizer: every probe works on text through each model's own
chat template.

Derived rows: ALO-ASR (MixAT's "at least one attack succeeds") per model, from the per-prompt masks of every
jailbreak unit that attacked that model (direct request, its own GCG suffix, suffixes transferred from the other);
bias amplification (student / teacher bias rate) for every student whose teacher was audited in the same run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.audits.families.base import FAMILIES, EvalData, ModelFamily, Plan, StoredUnit, instance_if_loaded
from robustdistill.audits.probes.language.context import ATTACKED, BROKEN_MASKS, role_field
from robustdistill.errors import UserInputError
from robustdistill.stats import proportion_row

@dataclass(frozen=True)
class LanguageData:
    """The evaluation examples (an InstructionDataset) and the spec they came from (for member ids)."""

    spec: Any
    split: str
    examples: Any

    @property
    def fingerprint(self) -> str:
        return self.examples.fingerprint

    @functools.cached_property
    def pool(self) -> Any:
        """Every example of the spec (members are resolved against it): read or generated once per audit."""
        return self.spec.pool()

    def __len__(self) -> int:
        return len(self.examples)


@FAMILIES.register("language-model")
class LanguageModelFamily(ModelFamily):
    name = "language-model"
    title = "a language model"

    def accepts(self, model: Any) -> bool:
        return instance_if_loaded(model, "robustdistill.models.language", "LanguageModel")

    def load_data(self, suite: Any) -> EvalData:
        from robustdistill.data.instruction_spec import InstructionSpec

        if not isinstance(suite.data, InstructionSpec):
            raise UserInputError("data.kind", f"{suite.data.kind!r} is image data; language-model probes read "
                                 "instruction data", "use kind = 'instructions' (the built-in generator), "
                                 "'alpaca-jsonl', 'sharegpt-jsonl' or 'hf-instructions'")
        examples = suite.data.load(suite.split).subset(suite.samples, seed=suite.seed)
        return LanguageData(suite.data, suite.split, examples)

    def check_models(self, models: Mapping[str, Any], data: Any, suite: Any) -> None:
        for role, model in models.items():
            if not model.chat_template:
                raise UserInputError(role_field(role), f"{model.path or 'the model'} has no chat template",
                                     "save the tokenizer with its chat_template (tokenizer.save_pretrained) - every "
                                     "language-model probe renders prompts with it")
            if model.tokenizer.eos_token_id is None:
                raise UserInputError(role_field(role), f"{model.path or 'the model'}'s tokenizer has no eos token",
                                     "set eos_token in tokenizer_config.json")

    def context(self, data: Any, models: Mapping[str, Any], suite: Any, artifacts: Path, plan: Plan) -> Any:
        from robustdistill.audits.probes.language.context import LanguageContext

        return LanguageContext(models=dict(models), seed=suite.seed, batch_size=suite.batch_size, artifacts=artifacts,
                               data=data)

    def derive(self, manifest: Mapping[str, Any], units: Sequence[StoredUnit]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from robustdistill.audits.probes.language.bias import amplification_rows

        return alo_rows(units) + amplification_rows(units, seed=int(manifest.get("seed", 0))), []


def alo_rows(units: Sequence[StoredUnit]) -> list[dict[str, Any]]:
    """ALO-ASR per model: over the prompts every jailbreak unit of that model attacked, the fraction broken by at
    least one of them (Wilson interval). Only prompts attacked by ALL its jailbreak units count, so the number never
    mixes prompts some attacks skipped."""
    attacked: dict[str, np.ndarray] = {}
    broken: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    for unit in units:
        for role, masks in unit.masks.items():
            if ATTACKED not in masks:
                continue
            hit = np.zeros_like(masks[ATTACKED], dtype=bool)
            for name in BROKEN_MASKS:
                if name in masks:
                    hit |= masks[name]
            attacked[role] = attacked[role] & masks[ATTACKED] if role in attacked else masks[ATTACKED].copy()
            broken[role] = broken[role] | hit if role in broken else hit
            sources.setdefault(role, []).append(unit.probe)
    rows = []
    for role in attacked:
        value, ci, n = proportion_row(broken[role][attacked[role]])
        if n == 0:
            continue
        rows.append({"probe": "alo-asr", "model": role, "metric": "alo_asr", "value": value, "ci95": ci, "n": n,
                     "params": {"of": sorted(set(sources[role]))}})
    return rows
