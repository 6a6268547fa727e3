"""The size probe: ``kind = "size"`` measures each model's parameter count and MACs, so a report can put a family
of students of different sizes (ProARD's, say) against their teacher: accuracy and robustness against size.

A suite auditing three students of one family against their teacher::

    [pipeline]
    teacher = "checkpoints/cifar10-teacher"
    student = "checkpoints/proard-large"
    extra = { small = "checkpoints/proard-small", medium = "checkpoints/proard-medium" }

    [[probes]]
    kind = "clean"

    [[probes]]
    use = "attacks/cifar10-linf.toml"    # the attacks whose robust accuracy is shown against size

    [[probes]]
    kind = "size"

    [gates]
    "small.size.parameters" = { max = 2_000_000 }
    "small.clean.accuracy" = { min = 0.8 }

Rows per model: ``parameters`` (count_params) and ``macs`` (count_macs: conv and linear multiply-accumulates for
ONE input of the evaluation data's shape, recorded as ``params.input_shape``). With size rows for two or more
models, report.md and report.html get a section "Accuracy and robustness against size".
"""

from __future__ import annotations

import logging

from robustdistill.audits.probes.base import PROBES, Probe, UnitResult
from robustdistill.audits.probes.image.context import ImageContext
from robustdistill.models.size import count_macs, count_params

log = logging.getLogger(__name__)


@PROBES.register("size")
class SizeProbe(Probe):
    """Model size: ``parameters`` (every parameter, shared ones once) and ``macs`` (multiply-accumulates of the
    conv and linear layers for one input of the evaluation data's shape, counted with forward hooks in eval mode).
    Exact numbers, so rows carry neither a confidence interval nor a sample count."""

    kind = "size"
    family = "classifier"
    group = "size"
    metrics = ("parameters", "macs")
    needs_threat_model = False

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        model = ctx.models[role]
        shape = [int(s) for s in ctx.x.shape[1:]]
        parameters = count_params(model)
        macs = count_macs(model, shape)
        log.debug("%s: %d parameters, %d MACs for one input of shape %s", role, parameters, macs, shape)
        rows = [
            {"probe": self.name, "model": role, "metric": "parameters", "value": float(parameters), "ci95": None,
             "n": None, "params": self.row_params()},
            {"probe": self.name, "model": role, "metric": "macs", "value": float(macs), "ci95": None, "n": None,
             "params": self.row_params(input_shape=shape)},
        ]
        return UnitResult(rows)


__all__ = ["SizeProbe"]
