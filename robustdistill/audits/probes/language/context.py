"""The unit context of the language-model family: the models, the evaluation examples, and what units share within
one run (greedy responses already generated, GCG suffixes already optimised, cached in the run's artifacts)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustdistill.audits.probes.base import EvalContext
from robustdistill.errors import UserInputError

#: Per-prompt masks a jailbreak unit stores for a model: which prompts it attacked, and which it broke.
ATTACKED = "attacked"
BROKEN_MASKS = ("direct", "init", "broken", "transfer")


def role_field(role: str) -> str:
    return f"pipeline.{role}" if role in ("teacher", "student") else f"pipeline.extra.{role}"


@dataclass(kw_only=True)
class LanguageContext(EvalContext):
    """What a language-model unit sees: the models, the evaluation examples (``data``, the family's LanguageData) and
    the greedy responses already generated this run."""

    data: Any
    _responses: dict[tuple[str, str, int], list[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.data)

    @property
    def examples(self) -> Any:
        return self.data.examples

    def indices(self, family: str, limit: int | None = None, *, where: str) -> list[int]:
        """Positions (in the evaluation examples) of the examples of ``family``, the first ``limit`` of them."""
        found = [i for i, example in enumerate(self.examples) if example.family == family]
        if not found:
            raise UserInputError(f"{where}.family", f"the evaluation split has no {family!r} examples (families: "
                                 f"{', '.join(self.examples.families())})", "name a family the data has, or give "
                                 "more samples")
        return found[:limit] if limit else found

    def responses(self, role: str, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy responses of ``role`` to ``prompts``, generated once per run (refusal and GCG probes share them)."""
        from robustdistill.models.lm_text import generate

        key = (role, hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest(), max_new_tokens)
        if key not in self._responses:
            self._responses[key] = generate(self.models[role], list(prompts), max_new_tokens=max_new_tokens,
                                            batch_size=min(self.batch_size, 64))
        return self._responses[key]
