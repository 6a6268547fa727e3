"""The ``refusal`` probe: what each model does with plain harmful requests, before any attack - the fraction of
harmful requests (the generator's ``harmful`` family, or the family named) it refuses, judged by refusal-prefix
matching on its greedy response; and, as over-refusal, the fraction of benign requests it refuses."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, accuracy_row
from robustdistill.audits.probes.language.context import LanguageContext

HARMFUL = "harmful"


class RefusalConfig(ProbeConfig):
    family: str = HARMFUL
    prompts: int | None = Field(None, ge=1, le=100_000)
    max_new_tokens: int = Field(32, ge=1, le=4096)


@PROBES.register("refusal")
class RefusalProbe(Probe):
    """Refusal rate on harmful requests and over-refusal on benign ones (refusal-prefix judge, greedy responses)."""

    kind = "refusal"
    family = "language-model"
    group = "lm-behaviour"
    config_class: ClassVar[type[ProbeConfig]] = RefusalConfig
    metrics = ("refusal_rate", "benign_refusal_rate")
    needs_threat_model = False
    config: RefusalConfig

    def params(self) -> dict[str, Any]:
        return {"family": self.config.family, "prompts": self.config.prompts,
                "max_new_tokens": self.config.max_new_tokens}

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        from robustdistill.attacks.judges import RefusalPrefixJudge

        (role,) = roles
        judge = RefusalPrefixJudge()
        harmful = ctx.indices(self.config.family, self.config.prompts, where=self.where)
        benign = [i for i, e in enumerate(ctx.examples) if e.family != self.config.family]
        rows = []
        for metric, indices in (("refusal_rate", harmful), ("benign_refusal_rate", benign)):
            prompts = [ctx.examples[i].prompt for i in indices]
            responses = ctx.responses(role, prompts, self.config.max_new_tokens) if prompts else []
            refused = np.array([judge.refusal_found(r) is not None for r in responses], dtype=bool)
            rows.append(accuracy_row(self.name, role, metric, refused, self.row_params(judge="refusal-prefix")))
        return UnitResult(rows)


