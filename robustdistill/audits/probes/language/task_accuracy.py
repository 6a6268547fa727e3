"""The ``task-accuracy`` probe: exact-match accuracy of greedy responses on the benign task families a model was
trained on, and on the held-out families it never saw (the generator's "untargeted" tasks)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, accuracy_row
from robustdistill.audits.probes.language.context import LanguageContext
from robustdistill.audits.probes.language.refusal import HARMFUL


class TaskConfig(ProbeConfig):
    max_new_tokens: int = Field(32, ge=1, le=4096)


def normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").casefold().split())


@PROBES.register("task-accuracy")
class TaskAccuracyProbe(Probe):
    """Exact-match accuracy (case, surrounding space and a final period ignored) of greedy responses on benign
    tasks: ``accuracy`` over the families trained on, ``held_out_accuracy`` over held-out families."""

    kind = "task-accuracy"
    family = "language-model"
    group = "lm-behaviour"
    config_class: ClassVar[type[ProbeConfig]] = TaskConfig
    metrics = ("accuracy", "held_out_accuracy")
    needs_threat_model = False
    config: TaskConfig

    def params(self) -> dict[str, Any]:
        return {"max_new_tokens": self.config.max_new_tokens}

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        benign = [i for i, e in enumerate(ctx.examples) if e.family != HARMFUL]
        responses = ctx.responses(role, [ctx.examples[i].prompt for i in benign], self.config.max_new_tokens)
        correct = np.array([normalise(r) == normalise(ctx.examples[i].response) for i, r in zip(benign, responses)])
        held_out = np.array([ctx.examples[i].held_out for i in benign], dtype=bool)
        rows = []
        for metric, keep in (("accuracy", ~held_out), ("held_out_accuracy", held_out)):
            # Data without held-out families still gets the row, with no value (n = 0): gates see "missing".
            rows.append(accuracy_row(self.name, role, metric, correct[keep], self.row_params()))
        return UnitResult(rows)
