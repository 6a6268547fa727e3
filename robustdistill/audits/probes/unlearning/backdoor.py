"""The ``backdoor-removal`` probe: does a text-to-image model still draw its backdoor target when the trigger is in
the prompt, before and after a removal defence (SKD-CAG), and what did the defence change on clean prompts?

One unit compares the model ``before`` the defence (the backdoored one) with the model ``after`` it (and, when
``clean`` names it, the model before the backdoor was planted). Every model draws the same ``prompts`` (by default
every caption the t2i model was trained on, ``repeats`` times each) twice from the same noise: as written, and with
the trigger prepended. A detector of the backdoor's target (robustdistill.attacks.backdoor: a patch rule, a style
classifier, fitted on real digits with a stated false-positive bound) flags the samples that show it, and the digits
classifier reads the clean prompts' samples. Rows:

- every model: ``attack_success_rate`` (triggered samples flagged; Wilson interval), ``false_trigger_rate``
  (clean-prompt samples flagged) and ``prompt_accuracy`` (clean-prompt samples read as the digit the prompt names);
- ``after`` only, paired with ``before`` on the same prompt and noise: ``removal_rate`` (of the triggered samples
  that showed the target before, the fraction that no longer do: SKD-CAG's paper reports 100% for pixel patches, 93%
  for styles), ``clean_agreement`` (clean-prompt samples the classifier reads as the same digit as before: fidelity)
  and ``clean_pixel_distance`` / ``triggered_pixel_distance`` (root-mean-square pixel change per sample, bootstrap
  interval: a defence should move the triggered samples, not the clean ones).

The trigger and the target are those the backdoored model's robustdistill.json records (``backdoor``), unless given.
Samples are saved as ``artifacts/backdoor-<probe>-<role>.npz`` for the report's triggered-vs-clean grids.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from robustdistill.audits.probes.base import PROBES, ProbeConfig, UnitResult, accuracy_row, value_row
from robustdistill.audits.probes.diffusion.context import DiffusionContext
from robustdistill.audits.probes.diffusion.quality import GenerationQualityProbe
from robustdistill.errors import UserInputError
from robustdistill.utils import atomic_path

ARTIFACT_PREFIX = "backdoor-"
EVERY_MODEL = ("attack_success_rate", "false_trigger_rate", "prompt_accuracy")
PAIRED = ("removal_rate", "clean_agreement", "clean_pixel_distance", "triggered_pixel_distance")


class BackdoorRemovalConfig(ProbeConfig):
    before: str = Field(min_length=1)  # the role of the backdoored model
    after: str = Field(min_length=1)  # the role of the model the defence made from it
    clean: str | None = None  # the role of the model before the backdoor was planted, if audited
    trigger: str | None = None  # None: the before model's recorded trigger
    target: str | None = None  # None: its recorded target ("patch" or "style")
    prompts: list[str] | None = Field(None, min_length=1, max_length=10_000)  # None: the t2i captions
    repeats: int = Field(4, ge=1, le=1000)
    steps: int = Field(20, ge=1, le=1000)
    fpr: float = Field(0.05, gt=0, lt=1)  # the detector's false-positive bound on real digits
    classifier: str = Field(min_length=1)
    classifier_recipe: str | None = None
    resamples: int = Field(1000, ge=20, le=100_000)


def artifact_name(probe: str, role: str) -> str:
    return f"{ARTIFACT_PREFIX}{probe}-{role}.npz"


def default_prompts() -> list[str]:
    """Every caption of the t2i trainer, template by template (so a grid's first columns are different digits)."""
    from robustdistill.trainers.t2i import CAPTIONS, NUM_CLASSES, caption

    return [caption(d, k) for k in range(len(CAPTIONS)) for d in range(NUM_CLASSES)]


def prompt_digits(prompts: list[str]) -> np.ndarray:
    """The digit each prompt names (-1 where it names none or several), read from the t2i captions' words."""
    from robustdistill.trainers.t2i import WORDS

    digits = []
    for prompt in prompts:
        tokens = prompt.lower().replace(",", " ").split()
        named = {d for d, word in enumerate(WORDS) if word in tokens or str(d) in tokens}
        digits.append(named.pop() if len(named) == 1 else -1)
    return np.asarray(digits)


def rms_change(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return ((a - b) ** 2).flatten(1).mean(dim=1).sqrt().numpy()


def mean_interval(values: np.ndarray, seed: int, resamples: int) -> list[float] | None:
    if len(values) < 2:
        return None
    drawn = np.random.default_rng(seed).choice(values, size=(resamples, len(values))).mean(axis=1)
    lo, hi = np.percentile(drawn, [2.5, 97.5])
    return [float(lo), float(hi)]


@PROBES.register("backdoor-removal")
class BackdoorRemovalProbe(GenerationQualityProbe):
    """Attack success before and after a backdoor-removal defence, the removal rate and clean-prompt fidelity."""

    kind = "backdoor-removal"
    group = "unlearning"
    config_class: ClassVar[type[ProbeConfig]] = BackdoorRemovalConfig
    metrics = EVERY_MODEL + PAIRED
    config: BackdoorRemovalConfig

    def validate(self) -> None:
        super().validate()
        cfg = self.config
        roles = [cfg.before, cfg.after, *([cfg.clean] if cfg.clean else [])]
        if len(set(roles)) != len(roles):
            raise UserInputError(f"{self.where}.after", f"before, after and clean must be three models: {roles}",
                                 "name the backdoored model, the defended one and (optionally) the clean one")
        if cfg.target is not None:
            from robustdistill.attacks.backdoor.targets import check_target

            check_target(cfg.target, f"{self.where}.target")
        if cfg.trigger is not None:
            from robustdistill.attacks.backdoor.targets import check_trigger

            check_trigger(cfg.trigger, f"{self.where}.trigger")
        self.trigger, self.target = cfg.trigger, cfg.target
        self.prompts = list(cfg.prompts) if cfg.prompts else default_prompts()
        self.detector: Any = None

    def roles(self) -> list[str]:
        cfg = self.config
        return [*([cfg.clean] if cfg.clean else []), cfg.before, cfg.after]

    def check_roles(self, roles: list[str]) -> None:
        super().check_roles(roles)
        for key in ("before", "after", "clean"):
            role = getattr(self.config, key)
            if role is not None and role not in roles:
                raise UserInputError(f"{self.where}.{key}", f"{role!r} is not a model of the suite",
                                     f"use roles of its [pipeline]: {', '.join(roles)}")

    def audited(self, roles: list[str]) -> list[str]:
        return [role for role in self.roles() if role in roles]

    def units(self, roles: list[str]) -> list[tuple[str, ...]]:
        return [tuple(self.audited(roles))]

    def produces(self, role: str) -> tuple[str, ...]:
        return self.metrics if role == self.config.after else EVERY_MODEL

    def params(self) -> dict[str, Any]:
        params = self.config.model_dump(mode="json", exclude={"kind", "name", "models", "classifier_recipe",
                                                               "prompts", "resamples"}, exclude_none=True)
        return {**params, "trigger": self.trigger, "target": self.target, "prompts": len(self.prompts),
                **({"classifier_sha256": self.classifier_sha256} if self.classifier_sha256 else {})}

    def expected_cost(self) -> float:
        return len(self.roles()) * 2 * len(self.prompts) * self.config.repeats * self.config.steps / 300

    # --- checked before the run directory exists ---------------------------------------------------------------
    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        from robustdistill.attacks.backdoor.targets import check_target, check_trigger
        from robustdistill.audits.families.diffusion import require_conditioning

        require_conditioning(models, "text", f"the {self.kind} probe {self.name!r}")
        record = (getattr(models[self.config.before], "provenance", None) or {}).get("backdoor")
        record = record if isinstance(record, dict) else {}
        for key in ("trigger", "target"):
            if getattr(self, key) is None:
                if record.get(key) is None:
                    raise UserInputError(f"{self.where}.{key}", f"the {self.config.before} model records no "
                                         f"backdoor {key}", f"set {key} = ... (the backdoor's {key})")
                setattr(self, key, record[key])
        check_trigger(self.trigger, f"{self.where}.trigger")
        check_target(self.target, f"{self.where}.target")

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        """The classifier (the generation-quality probe's checks), and the detector, fitted on the data's real train
        images."""
        from robustdistill.attacks.backdoor.detectors import fit_detector
        from robustdistill.data import load_split

        super().check_data(models, data)
        train = load_split(data.spec, "train")
        self.detector = fit_detector(self.target, train.x, seed=self.seed, fpr=self.config.fpr)

    # --- running ----------------------------------------------------------------------------------------------
    def run(self, ctx: DiffusionContext, roles: tuple[str, ...]) -> UnitResult:
        from robustdistill.attacks.backdoor.success import attack_success

        cfg = self.config
        prompts = [p for p in self.prompts for _ in range(cfg.repeats)]
        digits = np.repeat(prompt_digits(self.prompts), cfg.repeats)
        named = digits >= 0
        params = self.row_params(trigger=self.trigger, target=self.target, steps=cfg.steps,
                                 detector_threshold=round(float(self.detector.threshold), 6))
        draws, read, rows, artifacts = {}, {}, [], []
        for role in roles:
            with torch.no_grad():
                draws[role] = attack_success(ctx.models[role], self.detector, prompts, self.trigger, seed=ctx.seed,
                                             steps=cfg.steps)
            read[role] = self.read(draws[role].clean, ctx.batch_size)[0]
            d = draws[role]
            rows += [accuracy_row(self.name, role, "attack_success_rate", d.triggered_flags.numpy(), params),
                     accuracy_row(self.name, role, "false_trigger_rate", d.clean_flags.numpy(), params),
                     accuracy_row(self.name, role, "prompt_accuracy", read[role][named] == digits[named], params)]
            if ctx.artifacts is not None:
                artifacts.append(self._save(ctx, role, d))
        before, after = draws[cfg.before], draws[cfg.after]
        shown = before.triggered_flags.numpy()
        rows += [accuracy_row(self.name, cfg.after, "removal_rate", ~after.triggered_flags.numpy()[shown],
                              {**params, "shown_before": int(shown.sum())}),
                 accuracy_row(self.name, cfg.after, "clean_agreement", read[cfg.after] == read[cfg.before], params)]
        for metric, a, b in (("clean_pixel_distance", after.clean, before.clean),
                             ("triggered_pixel_distance", after.triggered, before.triggered)):
            change = rms_change(a, b)
            rows.append(value_row(self.name, cfg.after, metric, float(change.mean()), len(change), params,
                                  mean_interval(change, self.seed, cfg.resamples)))
        return UnitResult(rows, artifacts=artifacts)

    def _save(self, ctx: DiffusionContext, role: str, draws: Any) -> str:
        """images (clean prompts' samples, then the triggered ones), ``triggered`` (0/1) and ``flagged``."""
        name = artifact_name(self.name, role)
        ctx.artifacts.mkdir(parents=True, exist_ok=True)
        images = torch.cat([draws.clean, draws.triggered]).float().clamp(0, 1).numpy()
        triggered = np.repeat([0, 1], len(draws.clean))
        flagged = torch.cat([draws.clean_flags, draws.triggered_flags]).numpy()
        with atomic_path(ctx.artifacts / name) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, images=images.astype(np.float32), triggered=triggered.astype(np.int64),
                     flagged=flagged.astype(bool))
        return name
