"""The ``generation-quality`` probe: how good and how fast each diffusion model's class-conditional samples are.

Per model, ``per_class`` samples of every class of the evaluation data are drawn (``steps`` DDIM steps for a
multi-step model, one for a one-step generator; the steps used are in each row's params) and a digits classifier
(``classifier``, a checkpoint; trained first from ``classifier_recipe`` when missing) reads them:

- ``class_accuracy``: the fraction of samples the classifier assigns the class they were asked for (Wilson
  interval): does the model draw the digit it is told to?
- ``frechet_distance``: the Fréchet distance between the classifier's penultimate-layer features of the samples and
  of the real evaluation images (the FID recipe of Heusel et al. 2017 with a domain classifier in place of
  Inception; percentile-bootstrap interval). 0 means the two feature distributions match in mean and covariance.
- ``samples_per_second``: samples drawn per second of generation on the suite's device (interval: bootstrap over
  the per-class batches' timings). It depends on the machine, so gates on it travel badly.

The samples are saved as ``artifacts/samples-<probe>-<role>.npz`` (images, labels, predicted labels), from which
the report draws its sample grids.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.diffusion.context import DiffusionContext, Samples
from robustdistill.errors import UserInputError
from robustdistill.stats import frechet_bootstrap_ci, frechet_distance
from robustdistill.utils import atomic_path, model_device

SAMPLES_PREFIX = "samples-"


class QualityConfig(ProbeConfig):
    classifier: str = Field(min_length=1)
    classifier_recipe: str | None = None
    per_class: int = Field(20, ge=2, le=10_000)
    steps: int = Field(50, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0.0, le=100.0)
    resamples: int = Field(200, ge=20, le=10_000)


def samples_artifact(probe: str, role: str) -> str:
    return f"{SAMPLES_PREFIX}{probe}-{role}.npz"


def feature_layer(classifier: nn.Module, num_classes: int) -> nn.Linear | None:
    """The classifier's last fully connected layer, when it maps to one logit per class: its input is the
    penultimate-layer feature vector."""
    last = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    return last[-1] if last and last[-1].out_features == num_classes else None


@PROBES.register("generation-quality")
class GenerationQualityProbe(Probe):
    """Class-conditional accuracy, Fréchet distance to real images, and samples per second of diffusion models."""

    kind = "generation-quality"
    family = "diffusion"
    group = "generation"
    config_class: ClassVar[type[ProbeConfig]] = QualityConfig
    metrics = ("class_accuracy", "frechet_distance", "samples_per_second")
    needs_threat_model = False
    config: QualityConfig

    def validate(self) -> None:
        from robustdistill.trainers.teachers import check_teacher

        check_teacher(self.config.classifier, self.config.classifier_recipe, field=f"{self.where}.classifier",
                      what="path/to/digits-classifier")
        self.classifier: nn.Module | None = None
        self.layer: nn.Linear | None = None
        self.classifier_sha256: str | None = None
        self._real: tuple[str, np.ndarray] | None = None  # (data fingerprint, real images' features)

    def params(self) -> dict[str, Any]:
        params = self.config.model_dump(mode="json", exclude={"kind", "name", "models", "classifier_recipe"},
                                        exclude_none=True)
        return params | ({"classifier_sha256": self.classifier_sha256} if self.classifier_sha256 else {})

    def expected_cost(self) -> float:
        return 10 * self.config.per_class * self.config.steps / 3 / 100  # UNet passes, against ~100 points

    # --- checked before the run directory exists ---------------------------------------------------------------
    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        from robustdistill.audits.families.diffusion import require_conditioning  # lazy: the families import probes

        require_conditioning(models, "class", f"the {self.kind} probe {self.name!r}")

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        """Load the classifier (training it from its recipe when missing) and refuse one that does not read the
        evaluation images: another input shape, another number of classes, or no feature layer."""
        from robustdistill.audits.families.classifier import check_compatible  # lazy: the families import probes
        from robustdistill.models import checkpoint_sha256, load_model
        from robustdistill.trainers.teachers import ensure_teacher

        where = f"{self.where}.classifier"
        path = ensure_teacher(self.config.classifier, self.config.classifier_recipe, field=where)
        try:
            classifier = load_model(path)
        except UserInputError as exc:
            raise UserInputError(where, f"{path}: {exc.problem}", exc.fix) from None
        fix = f"give a classifier trained on the {data.spec.kind} data (e.g. classifier_recipe = " \
              "'defenses/digits-standard.toml')"
        if not isinstance(classifier, nn.Module):
            raise UserInputError(where, f"{path} is {type(classifier).__name__}, not an image classifier", fix)
        shape = getattr(classifier, "input_shape", None)
        if shape is not None and tuple(shape) != tuple(data.input_shape):
            raise UserInputError(where, f"{path} reads {tuple(shape)} images but the {data.spec.kind} data is "
                                 f"{tuple(data.input_shape)}", fix)
        try:  # one forward pass on two real images, as the classifier family checks its models
            check_compatible({"classifier": classifier.eval()}, data.images.x, data.num_classes, data.spec.kind)
        except UserInputError as exc:
            raise UserInputError(where, f"{path} {exc.problem}", fix) from None
        layer = feature_layer(classifier, data.num_classes)
        if layer is None:
            raise UserInputError(where, f"{path} does not end in a fully connected layer, so it has no "
                                 "penultimate-layer features for the Fréchet distance", fix)
        for parameter in classifier.parameters():
            parameter.requires_grad_(False)
        self.classifier, self.layer, self.classifier_sha256 = classifier, layer, checkpoint_sha256(path)

    # --- running ----------------------------------------------------------------------------------------------
    def read(self, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(predicted labels, penultimate-layer features) of ``images`` under the classifier."""
        assert self.classifier is not None and self.layer is not None, "check_data loads the classifier first"
        captured: list[torch.Tensor] = []
        hook = self.layer.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].detach().cpu()))
        predicted = []
        try:
            with torch.no_grad():
                for start in range(0, len(images), batch_size):
                    batch = images[start:start + batch_size].to(model_device(self.classifier))
                    predicted.append(self.classifier(batch).argmax(dim=1).cpu())
        finally:
            hook.remove()
        return torch.cat(predicted).numpy(), torch.cat(captured).flatten(1).double().numpy()

    def real_features(self, ctx: DiffusionContext) -> np.ndarray:
        if self._real is None or self._real[0] != ctx.data.fingerprint:
            self._real = (ctx.data.fingerprint, self.read(ctx.data.images.x, ctx.batch_size)[1])
        return self._real[1]

    def read_samples(self, ctx: DiffusionContext, role: str) -> tuple[Samples, np.ndarray, np.ndarray, dict[str, Any]]:
        """``role``'s samples (drawn once per run for these settings), the labels and features the classifier reads
        in them, and the params of the rows about them."""
        cfg = self.config
        samples = ctx.samples(role, cfg.per_class, cfg.steps, cfg.guidance)
        predicted, features = self.read(samples.images, ctx.batch_size)
        generator = "one-step" if getattr(ctx.models[role], "one_step_t", None) is not None else "ddim"
        params = self.row_params(steps=samples.steps, generator=generator, classifier=cfg.classifier,
                                 classifier_sha256=self.classifier_sha256)
        return samples, predicted, features, params

    def run(self, ctx: DiffusionContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        cfg = self.config
        samples, predicted, features, params = self.read_samples(ctx, role)
        labels = samples.labels.numpy()
        real = self.real_features(ctx)
        rows = [accuracy_row(self.name, role, "class_accuracy", predicted == labels, params),
                value_row(self.name, role, "frechet_distance", frechet_distance(features, real), len(labels),
                          {**params, "n_real": len(real)},
                          frechet_bootstrap_ci(features, real, seed=self.seed, resamples=cfg.resamples)),
                self.speed_row(role, samples, params)]
        return UnitResult(rows, artifacts=self.keep_samples(ctx, role, samples, predicted))

    def speed_row(self, role: str, samples: Samples, params: dict[str, Any]) -> dict[str, Any]:
        return value_row(self.name, role, "samples_per_second", samples.per_second, len(samples.labels), params,
                         speed_interval(samples, seed=self.seed))

    def keep_samples(self, ctx: DiffusionContext, role: str, samples: Samples, predicted: np.ndarray) -> list[str]:
        """Save the samples for the report's grids (when the run keeps artifacts); the files written."""
        if ctx.artifacts is None:
            return []
        return [save_samples(ctx.artifacts, samples_artifact(self.name, role), samples, predicted)]


def speed_interval(samples: Samples, *, seed: int, resamples: int = 1000) -> list[float] | None:
    """Percentile-bootstrap 95% interval of samples per second, resampling the per-class batches' timings."""
    seconds = np.asarray(samples.seconds, dtype=float)
    if len(seconds) < 2 or not (seconds > 0).all():
        return None
    per_batch = len(samples.labels) / len(seconds)
    drawn = np.random.default_rng(seed).choice(seconds, size=(resamples, len(seconds)))
    lo, hi = np.percentile(per_batch / drawn.mean(axis=1), [2.5, 97.5])
    return [float(min(lo, samples.per_second)), float(max(hi, samples.per_second))]


def save_samples(folder: Path, name: str, samples: Samples, predicted: np.ndarray) -> str:
    """``images`` (n, C, H, W) float32 in [0, 1], ``labels`` asked for, ``predicted`` by the classifier, and
    ``steps`` - what the report's sample grid shows."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / name) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, images=samples.images.numpy().astype(np.float32), labels=samples.labels.numpy(),
                 predicted=predicted.astype(np.int64), steps=np.int64(samples.steps))
    return name
