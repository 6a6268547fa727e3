"""The ``class-forgetting`` probe: did an unlearning defence (SFD) make a diffusion model forget a class, and what
did the other classes keep?

Per model - the model before the defence (the teacher) and after it (the student) are audited alike - ``per_class``
samples of every class are drawn (the samples the generation-quality probe draws with the same per_class, steps and
guidance: shared, not drawn twice) and the digits classifier reads them:

- ``forget_accuracy``: the fraction of samples asked for the forgotten class that the classifier reads as that
  class (Wilson interval). High before, near 0 after a defence that worked (SFD's paper: 0.36% on CIFAR-10).
- ``override_rate``: the fraction of them read as the override class the defence steered the class toward (when
  one was recorded or set).
- ``retain_accuracy``: class accuracy on the remaining classes (Wilson): what the defence kept.
- ``retain_frechet_distance``: the Fréchet distance between the classifier's features of the remaining classes'
  samples and of the real evaluation images of those classes (percentile-bootstrap interval).
- ``samples_per_second``: generation speed (a one-step student against its teacher's N steps).

The forgotten class is ``forget_class``, or else what the models' robustdistill.json record (``unlearning.
forget_class``, written by the sfd trainer); models recording different classes are refused. The samples are saved
as ``artifacts/samples-<probe>-<role>.npz``; the report shows them as before/after grids, the forgotten class's row
beside the remaining ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from robustdistill.audits.probes.base import PROBES, ProbeConfig, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.diffusion.context import DiffusionContext
from robustdistill.audits.probes.diffusion.quality import GenerationQualityProbe, QualityConfig
from robustdistill.errors import UserInputError
from robustdistill.stats import frechet_bootstrap_ci, frechet_distance


class ForgettingConfig(QualityConfig):
    forget_class: int | None = Field(None, ge=0)  # None: the class the models record they forgot
    override_class: int | None = Field(None, ge=0)  # None: the recorded one, if any


def recorded(model: Any, key: str) -> int | None:
    """``unlearning.<key>`` of a model's robustdistill.json, when it is an integer."""
    unlearning = (getattr(model, "provenance", None) or {}).get("unlearning")
    value = unlearning.get(key) if isinstance(unlearning, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@PROBES.register("class-forgetting")
class ClassForgettingProbe(GenerationQualityProbe):
    """Forget accuracy, retained accuracy and Fréchet distance, and speed, of diffusion models before and after an
    unlearning defence."""

    kind = "class-forgetting"
    group = "unlearning"
    config_class: ClassVar[type[ProbeConfig]] = ForgettingConfig
    metrics = ("forget_accuracy", "override_rate", "retain_accuracy", "retain_frechet_distance", "samples_per_second")
    config: ForgettingConfig

    def validate(self) -> None:
        super().validate()
        cfg = self.config
        if cfg.forget_class is not None and cfg.forget_class == cfg.override_class:
            raise UserInputError(f"{self.where}.override_class", "is the forgotten class",
                                 "give the class the defence steered the forgotten one toward, or leave it out")
        self.forget: int | None = cfg.forget_class
        self.override: int | None = cfg.override_class

    def params(self) -> dict[str, Any]:
        return {**super().params(), "forget_class": self.forget, "override_class": self.override}

    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        """Resolve the forgotten (and override) class from the config or the models' records."""
        super().check_models(models, checkpoints)
        for key, attribute in (("forget_class", "forget"), ("override_class", "override")):
            if getattr(self.config, key) is not None:
                continue
            found = {role: recorded(model, key) for role, model in models.items()}
            values = {v for v in found.values() if v is not None}
            if len(values) > 1:
                raise UserInputError(f"{self.where}.{key}", "the models record different classes: " + ", ".join(
                    f"{role} {value}" for role, value in found.items() if value is not None),
                    f"set {key} = N to say which one to audit")
            setattr(self, attribute, values.pop() if values else None)
        if self.forget is None:
            raise UserInputError(f"{self.where}.forget_class", "no model records a forgotten class",
                                 "set forget_class = N (the class the defence was asked to forget)")
        if self.forget == self.override:
            raise UserInputError(f"{self.where}.override_class", f"{self.override} is the forgotten class too",
                                 "set override_class to the class the defence steered toward")

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        for key, value in (("forget_class", self.forget), ("override_class", self.override)):
            if value is not None and value >= data.num_classes:
                raise UserInputError(f"{self.where}.{key}", f"{value} is not a class of the {data.spec.kind} data "
                                     f"(0-{data.num_classes - 1})", f"choose a class from 0 to {data.num_classes - 1}")
        super().check_data(models, data)

    def real_features(self, ctx: DiffusionContext) -> np.ndarray:
        """The classifier's features of the real evaluation images of the remaining classes."""
        key = f"{ctx.data.fingerprint}:retain-{self.forget}"
        if self._real is None or self._real[0] != key:
            keep = (ctx.data.images.y != self.forget).numpy()
            self._real = (key, self.read(ctx.data.images.x[keep], ctx.batch_size)[1])
        return self._real[1]

    def run(self, ctx: DiffusionContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        cfg = self.config
        samples, predicted, features, params = self.read_samples(ctx, role)
        labels = samples.labels.numpy()
        forgotten = labels == self.forget
        real = self.real_features(ctx)
        retained = features[~forgotten]
        rows = [accuracy_row(self.name, role, "forget_accuracy", predicted[forgotten] == self.forget, params)]
        if self.override is not None:
            rows.append(accuracy_row(self.name, role, "override_rate", predicted[forgotten] == self.override, params))
        rows += [accuracy_row(self.name, role, "retain_accuracy", predicted[~forgotten] == labels[~forgotten], params),
                 value_row(self.name, role, "retain_frechet_distance", frechet_distance(retained, real),
                           len(retained), {**params, "n_real": len(real)},
                           frechet_bootstrap_ci(retained, real, seed=self.seed, resamples=cfg.resamples)),
                 self.speed_row(role, samples, params)]
        return UnitResult(rows, artifacts=self.keep_samples(ctx, role, samples, predicted))
