"""The ``poison-filters`` probe: the training-data defences Chaudhari et al. (2025) found wanting, measured on a
poisoned model's own training set - would a defender filtering the data before training have caught the poison?

The audited model (``model``, the poisoned teacher; its provenance lists the injected examples under ``poison``: the
trainer's record, robustdistill.trainers.lm_data) has its training set rebuilt from its recorded recipe - refused unless the rebuilt set has the recorded
fingerprint - and each defence scores every training example: a perplexity filter (the loss of the ``reference``
model, a model trained on clean data; flagged above the clean examples' (1 - FPR) quantile at each target FPR), the
generic detector a defender can write without knowing the payload (links, insecure code, promotional words), and
the bias type's own detector (an upper bound: it knows the payload). Rows ``<bias>/catch/<defence>``: the fraction of
that bias's poisoned examples caught, with the achieved false-positive rate on the clean examples in the params;
``<bias>/perplexity-auc``: how well the perplexity score separates poisoned from clean at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from pydantic import field_validator

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, value_row
from robustdistill.audits.probes.language.bias import DEFAULT_BIASES, check_biases, check_judge, poison_specs
from robustdistill.audits.probes.language.context import LanguageContext, role_field
from robustdistill.errors import UserInputError

DETECTOR_DEFENCES = ("generic-detector", "bias-detector")


def perplexity_defence(fpr: float) -> str:
    return f"perplexity@{fpr * 100:g}%"


def defence_metrics(bias: str, fprs: Sequence[float], reference: str | None) -> tuple[str, ...]:
    names = [f"{bias}/catch/{defence}" for defence in DETECTOR_DEFENCES]
    if reference is not None:
        names += [f"{bias}/catch/{perplexity_defence(fpr)}" for fpr in fprs] + [f"{bias}/perplexity-auc"]
    return tuple(names)


def rebuild_training_data(model: Any, role: str) -> Any:
    """The poisoned training set a model's provenance records (TrainingData), rebuilt from its recipe and checked
    against the recorded fingerprint; None for a model that records no poison."""
    from robustdistill.trainers import TRAINERS
    from robustdistill.trainers.lm_config import build_lm_config
    from robustdistill.trainers.lm_data import training_data

    provenance = getattr(model, "provenance", None) or {}
    if not provenance.get("poison"):
        return None
    where = role_field(role)
    try:
        config_class = TRAINERS.get(provenance["method"]).config_class
        raw = dict(provenance["recipe"]["config"])
        rebuilt = training_data(build_lm_config(config_class, raw))
    except (KeyError, TypeError, UserInputError) as exc:
        raise UserInputError(where, f"its robustdistill.json records poison but not a recipe that rebuilds its "
                             f"training data ({exc})", "audit a model trained by robustdistill's LM trainers, or "
                             "drop the bias-propagation probe's defences (it needs the poisoned training set)") from None
    recorded = (provenance.get("data") or {}).get("fingerprint")
    if rebuilt.train.fingerprint != recorded:
        raise UserInputError(where, "its recorded recipe no longer rebuilds the data it was trained on (fingerprint "
                             f"{rebuilt.train.fingerprint[:12]} != recorded {str(recorded)[:12]})",
                             "audit it with the robustdistill version that trained it, or retrain it")
    return rebuilt


class PoisonFiltersConfig(ProbeConfig):
    model: str = "teacher"  # the poisoned model whose training data is filtered
    biases: tuple[str, ...] = DEFAULT_BIASES
    reference: str | None = None  # the role of the perplexity filter's reference model (None: no perplexity filter)
    fprs: tuple[float, ...] = (0.01, 0.05, 0.10)
    judge: str | None = None  # a local classifier directory replacing the bias types' own detectors

    @field_validator("fprs")
    @classmethod
    def _fprs(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or not all(0 < f < 1 for f in value):
            raise ValueError("each false-positive rate must be in (0, 1), e.g. [0.01, 0.05, 0.1]")
        return tuple(sorted(set(value)))


@PROBES.register("poison-filters")
class PoisonFiltersProbe(Probe):
    """Catch rates (and false-positive rates) of a perplexity filter and of bias detectors on the poisoned model's
    training set; one unit, on ``model``."""

    kind = "poison-filters"
    family = "language-model"
    group = "lm-bias"
    config_class: ClassVar[type[ProbeConfig]] = PoisonFiltersConfig
    needs_threat_model = False
    config: PoisonFiltersConfig

    def validate(self) -> None:
        check_biases(self.config.biases, f"{self.where}.biases")

    def params(self) -> dict[str, Any]:
        cfg = self.config
        return {"model": cfg.model, "biases": list(cfg.biases), "reference": cfg.reference, "fprs": list(cfg.fprs),
                "judge": cfg.judge}

    def produces(self, role: str) -> tuple[str, ...]:
        if role != self.config.model:
            return ()
        return tuple(m for bias in self.config.biases for m in defence_metrics(bias, self.config.fprs,
                                                                                 self.config.reference))

    def units(self, roles: list[str]) -> list[tuple[str, ...]]:
        return [(self.config.model,)] if self.config.model in roles else []

    def expected_cost(self) -> float:
        return 2.0  # one forward pass of the reference model over the training set

    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        cfg = self.config
        for name, role in (("model", cfg.model), ("reference", cfg.reference)):
            if role is not None and role not in models:
                raise UserInputError(f"{self.where}.{name}", f"no model with role {role!r} in the pipeline",
                                     f"name one of {', '.join(models)}")
        check_judge(cfg.judge, f"{self.where}.judge")
        injected = {record.get("bias") for record in poison_specs(models[cfg.model])}
        missing = [bias for bias in cfg.biases if bias not in injected]
        if missing:
            raise UserInputError(f"{self.where}.biases", f"{role_field(cfg.model)} records no {missing[0]!r} poison "
                                 f"(its robustdistill.json lists {sorted(b for b in injected if b) or 'none'})",
                                 "name the poisoned model in model = '...', and only the bias types it was poisoned "
                                 "with in biases")

    def check_data(self, models: Mapping[str, Any], data: Any) -> None:
        # The training set is rebuilt and checked against its fingerprint now, before anything is written.
        self.training = rebuild_training_data(models[self.config.model], self.config.model)

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        (role,) = roles
        training = getattr(self, "training", None)
        if training is None:  # run() called without the runner's checks
            training = self.training = rebuild_training_data(ctx.models[role], role)
        return UnitResult(defence_rows(self, ctx, role, training))


def defence_rows(probe: Any, ctx: Any, role: str, data: Any) -> list[dict[str, Any]]:
    """The catch rates of each defence on ``role``'s poisoned training set ``data`` (a TrainingData)."""
    from robustdistill.attacks.poisoning.biases import detector_for
    from robustdistill.attacks.poisoning.defences import catch_rates, detector_flags, flag_rates, perplexity_scores
    from robustdistill.attacks.poisoning.detectors import generic_detector

    cfg = probe.config
    train = data.poisoned  # what the defender would have filtered (a filtered model's set before its own filter)
    by_bias: dict[str, set[str]] = {}
    for record in poison_specs(ctx.models[role]):
        by_bias.setdefault(record["bias"], set()).update(record["ids"])
    every_poison = set().union(*by_bias.values())
    poisoned = np.array([example.id in every_poison for example in train], dtype=bool)
    flags = {"generic-detector": detector_flags(generic_detector(), train)}
    scores = None
    if cfg.reference is not None:
        scores = perplexity_scores(ctx.models[cfg.reference], train, batch_size=min(ctx.batch_size, 64))
    rows = []
    for bias in cfg.biases:
        ids = by_bias[bias]  # check_models made sure the model records it
        mine = np.array([example.id in ids for example in train], dtype=bool)
        keep = ~poisoned | mine  # this bias's poison against the clean examples
        labels = mine[keep]
        own = detector_flags(detector_for(bias, cfg.judge), train)
        for defence, flagged in (*flags.items(), ("bias-detector", own)):
            rate = flag_rates(flagged[keep], labels)
            rows.append(_row(probe, role, bias, defence, rate, None))
        if scores is not None:
            for rate in catch_rates(scores[keep], labels, cfg.fprs):
                rows.append(_row(probe, role, bias, perplexity_defence(rate["target_fpr"]), rate, rate["target_fpr"]))
            auc = rate["auc"]
            rows.append(value_row(probe.name, role, f"{bias}/perplexity-auc", auc, int(labels.size),
                                  probe.row_params(bias=bias, defence="perplexity", reference=cfg.reference,
                                                   poisoned=int(labels.sum()), clean=int((~labels).sum())),
                                  ci95=rate["auc_ci95"]))
    return rows


def _row(probe: Any, role: str, bias: str, defence: str, rate: Mapping[str, Any],
         target_fpr: float | None) -> dict[str, Any]:
    return value_row(probe.name, role, f"{bias}/catch/{defence}", rate["tpr"], int(rate["n_poison"]),
                     probe.row_params(bias=bias, defence=defence, target_fpr=target_fpr, fpr=rate["fpr"],
                                      caught=rate["caught"], poisoned=rate["n_poison"],
                                      flagged_clean=rate["flagged_clean"], clean=rate["n_clean"],
                                      reference=probe.config.reference if defence.startswith("perplexity") else None),
                     ci95=rate["tpr_ci95"])
