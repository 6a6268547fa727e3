"""The ``clean`` probe: natural top-1 accuracy of each model on the evaluation points."""

from __future__ import annotations

from robustdistill.audits.probes.base import PROBES, Probe, UnitResult, accuracy_row
from robustdistill.audits.probes.image.context import ImageContext


@PROBES.register("clean")
class CleanProbe(Probe):
    """Clean (natural) top-1 accuracy with its 95% Wilson interval."""

    kind = "clean"
    family = "classifier"
    group = "image-attacks"
    metrics = ("accuracy",)
    retainable = True
    needs_threat_model = False
    required_masks = ("correct",)

    def run(self, ctx: ImageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        correct = (ctx.clean_pred(role) == ctx.y).numpy()
        return UnitResult([accuracy_row(self.name, role, "accuracy", correct, self.row_params())],
                          masks={role: {"correct": correct}})
