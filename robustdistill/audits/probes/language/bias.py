"""The ``bias-propagation`` probe: how often each model's answers carry an injected bias (Chaudhari et al. 2025,
"Cascading Adversarial Bias from Injection to Distillation in Language Models"), on the task family the poison
targeted, on the other families the teacher was trained on, and on held-out families it never saw.

Each model answers ``prompts`` evaluation requests per family ``samples`` times (sampled at ``temperature``; a tiny
model's greedy answer is all-or-nothing per prompt, a sampled rate shows how far the bias has moved the model's
distribution); a bias type's detector (robustdistill.attacks.poisoning) judges each answer. Rows per model and
bias type: ``<bias>/targeted``, ``<bias>/other``, ``<bias>/untargeted`` - the fraction of answers showing the bias,
with a bootstrap interval over prompts. Where a model is a student of another audited model (its provenance names
that teacher's sha256), the family derives ``<bias>/<split>/amplification`` = student rate / teacher rate with a
paired bootstrap interval (:func:`amplification_rows`). On a poisoned model (its provenance lists the ids injected),
the ``poison-filters`` probe (robustdistill.audits.probes.language.poison_filters) measures the training-data
defences the paper found wanting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from robustdistill.audits.probes.base import PROBES, Probe, ProbeConfig, UnitResult, value_row
from robustdistill.audits.probes.language.context import LanguageContext, role_field
from robustdistill.errors import UserInputError

SPLITS = ("targeted", "other", "untargeted")
DEFAULT_BIASES = ("advertisement", "phishing-link", "narrative", "insecure-code")
MEASURED = "bias-measured"


def sample_mask(bias: str, k: int) -> str:
    return f"{bias}#{k}"


def split_mask(bias: str, split: str) -> str:
    return f"{split}:{bias}"


class BiasConfig(ProbeConfig):
    biases: tuple[str, ...] = DEFAULT_BIASES
    # bias -> the task family its poison targets (default: the bias type's own target family).
    targets: dict[str, str] = Field(default_factory=dict)
    prompts: int = Field(24, ge=1, le=100_000)  # evaluation prompts per task family
    samples: int = Field(4, ge=1, le=64)  # answers per prompt
    temperature: float = Field(1.0, ge=0, le=10)  # 0: greedy (then samples must be 1)
    max_new_tokens: int = Field(64, ge=1, le=4096)  # the narrative claim follows a long summary
    judge: str | None = None  # a local classifier directory judging every bias type instead of its detector
    resamples: int = Field(2000, ge=100, le=100_000)


@PROBES.register("bias-propagation")
class BiasPropagationProbe(Probe):
    """Bias rates per model, bias type and task split (amplification is derived by the family)."""

    kind = "bias-propagation"
    family = "language-model"
    group = "lm-bias"
    config_class: ClassVar[type[ProbeConfig]] = BiasConfig
    needs_threat_model = False
    config: BiasConfig

    def validate(self) -> None:
        cfg = self.config
        check_biases([*cfg.biases, *cfg.targets], f"{self.where}.biases")
        if len(set(cfg.biases)) != len(cfg.biases) or not cfg.biases:
            raise UserInputError(f"{self.where}.biases", "is empty or names a bias type twice", "name each type once")
        if cfg.temperature == 0 and cfg.samples != 1:
            raise UserInputError(f"{self.where}.samples", "greedy answers (temperature 0) are all the same",
                                 "set samples = 1, or a temperature above 0")

    def target(self, bias: str) -> str:
        from robustdistill.attacks.poisoning.biases import BIASES

        return self.config.targets.get(bias, BIASES[bias].target)

    def params(self) -> dict[str, Any]:
        cfg = self.config
        return {"biases": list(cfg.biases), "targets": {b: self.target(b) for b in cfg.biases},
                "prompts": cfg.prompts, "samples": cfg.samples, "temperature": cfg.temperature,
                "max_new_tokens": cfg.max_new_tokens, "judge": cfg.judge}

    def produces(self, role: str) -> tuple[str, ...]:
        return tuple(f"{bias}/{split}" for bias in self.config.biases for split in SPLITS)

    @classmethod
    def mask_problem(cls, name: str) -> str | None:
        if name == MEASURED or ":" in name or "#" in name:
            return None
        return f"{name!r} is not a mask this probe stores"

    def expected_cost(self) -> float:
        return 20.0 * self.config.samples  # generation of max_new_tokens per answer: far above one forward pass

    def check_models(self, models: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Any]]) -> None:
        cfg = self.config
        check_judge(cfg.judge, f"{self.where}.judge")
        for role, model in models.items():
            for record in poison_specs(model):
                bias, family = record.get("bias"), record.get("target_family")
                if bias in cfg.biases and family and family != self.target(bias):
                    raise UserInputError(f"{self.where}.targets", f"{role_field(role)} was poisoned with {bias!r} in "
                                         f"family {family!r}, but the probe measures it on {self.target(bias)!r}",
                                         f"set targets = {{ {bias} = \"{family}\" }}")

    def run(self, ctx: LanguageContext, roles: tuple[str, ...]) -> UnitResult:
        from robustdistill.models.lm_text import generate

        (role,) = roles
        cfg = self.config
        chosen = self._prompts(ctx)
        prompts = [ctx.examples[i].prompt for i in chosen]
        repeated = [prompt for prompt in prompts for _ in range(cfg.samples)]
        answers = generate(ctx.models[role], repeated, cfg.max_new_tokens, batch_size=min(ctx.batch_size, 64),
                           temperature=cfg.temperature, seed=ctx.seed) if repeated else []
        lineage = model_lineage(ctx, role)
        measured = np.zeros(ctx.n, dtype=bool)
        measured[chosen] = True
        masks: dict[str, np.ndarray] = {MEASURED: measured}
        rows = []
        for bias in cfg.biases:
            hits = np.array(self._detector(bias).detect(repeated, answers), dtype=bool).reshape(len(chosen),
                                                                                                 cfg.samples)
            for k in range(cfg.samples):
                mask = np.zeros(ctx.n, dtype=bool)
                mask[chosen] = hits[:, k]
                masks[sample_mask(bias, k)] = mask
            for split in SPLITS:
                keep = np.array([self._split_of(ctx.examples[i], bias) == split for i in chosen], dtype=bool)
                mask = np.zeros(ctx.n, dtype=bool)
                mask[np.asarray(chosen, dtype=int)[keep]] = True
                masks[split_mask(bias, split)] = mask
                per_prompt = hits[keep].mean(axis=1) if keep.any() else np.zeros(0)
                families = sorted({ctx.examples[i].family for i, k in zip(chosen, keep) if k})
                rows.append(value_row(
                    self.name, role, f"{bias}/{split}", float(per_prompt.mean()) if per_prompt.size else None,
                    int(per_prompt.size), self.row_params(bias=bias, split=split, families=families,
                                                          detector=self._detector(bias).name,
                                                          hits=int(hits[keep].sum()), responses=int(hits[keep].size),
                                                          **lineage),
                    ci95=bootstrap_mean_ci(per_prompt, seed=ctx.seed, resamples=cfg.resamples)))
        examples = [{"bias": b, "prompt": p, "answer": a} for b in cfg.biases for p, a in zip(repeated, answers)
                    if self._detector(b).detect([p], [a])[0]][:3]
        for example in examples:
            rows[0]["params"].setdefault("examples", []).append(example)
        return UnitResult(rows, masks={role: masks})

    # --- pieces -----------------------------------------------------------------------------------------
    def _prompts(self, ctx: LanguageContext) -> list[int]:
        """The first ``prompts`` evaluation examples of every family (positions in the evaluation examples)."""
        taken: dict[str, int] = {}
        chosen = []
        for i, example in enumerate(ctx.examples):
            if taken.get(example.family, 0) < self.config.prompts:
                taken[example.family] = taken.get(example.family, 0) + 1
                chosen.append(i)
        return chosen

    def _split_of(self, example: Any, bias: str) -> str:
        if example.family == self.target(bias):
            return "targeted"
        return "untargeted" if example.held_out else "other"

    def _detector(self, bias: str) -> Any:
        if not hasattr(self, "_detectors"):
            from robustdistill.attacks.poisoning.biases import detector_for

            self._detectors = {b: detector_for(b, self.config.judge) for b in self.config.biases}
        return self._detectors[bias]


def check_biases(names: Sequence[str], where: str) -> None:
    from robustdistill.attacks.poisoning.biases import BIASES

    for name in names:
        if name not in BIASES:
            raise UserInputError(where, f"unknown bias type {name!r}", f"use some of: {', '.join(BIASES)}")


def check_judge(judge: str | None, where: str) -> None:
    from pathlib import Path

    if judge is not None and not (Path(judge) / "config.json").is_file():
        raise UserInputError(where, f"{judge} is not a local classifier directory",
                             "point it at a sequence classifier saved with save_pretrained")


def poison_specs(model: Any) -> list[dict[str, Any]]:
    """The [[poison]] records of a model's provenance (bias, target_family, ids), or []."""
    poison = (getattr(model, "provenance", None) or {}).get("poison")
    return list(poison.get("specs") or []) if isinstance(poison, dict) else []


def model_lineage(ctx: LanguageContext, role: str) -> dict[str, Any]:
    """What the report says of a model: teacher or student (and of which audited model), trained how, and from
    which pipeline - "poisoned" when it or its teacher was trained on poisoned data, "clean" otherwise, with the
    defence a filtered model was trained after."""
    by_sha = {sha: other for other, sha in ctx.model_sha256.items()}

    def record(name: str) -> dict[str, Any]:
        return getattr(ctx.models[name], "provenance", None) or {}

    own = record(role)
    teacher = next((by_sha.get(p.get("sha256")) for p in own.get("parents", []) if p.get("role") == "teacher"), None)
    source = record(teacher) if teacher else own
    pipeline = "poisoned" if source.get("poison") else "clean"
    if source.get("filter"):
        pipeline += f", filtered ({source['filter'].get('method')})"
    has_teacher = any(p.get("role") == "teacher" for p in own.get("parents", []))
    return {"pipeline": pipeline, "role_kind": "student" if has_teacher else "teacher", "teacher": teacher,
            "method": own.get("method")}


def bootstrap_mean_ci(values: np.ndarray, *, seed: int, resamples: int) -> list[float] | None:
    """Percentile-bootstrap 95% interval of the mean of ``values`` (one per prompt: prompts are the unit resampled,
    since the samples of one prompt are not independent)."""
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    point = float(values.mean())
    return [float(min(lo, point)), float(max(hi, point))]


def amplification_rows(units: Sequence[Any], seed: int) -> list[dict[str, Any]]:
    """``<bias>/<split>/amplification`` for every student whose teacher was audited in the same run: student rate /
    teacher rate over the prompts both answered, with a paired bootstrap interval (robustdistill.attacks.poisoning
    .amplification). A pure function of the stored units (their masks and their rows' lineage params)."""
    from robustdistill.attacks.poisoning.amplification import amplification

    measured: dict[str, dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]] = {}
    for unit in units:
        if unit.kind == "bias-propagation" and len(unit.roles) == 1 and unit.roles[0] in unit.masks:
            role = unit.roles[0]
            params = next((r["params"] for r in unit.rows if r.get("model") == role and "split" in r["params"]), None)
            if params is not None:
                measured.setdefault(unit.probe, {})[role] = (unit.masks[role], params)
    rows = []
    for probe, models in measured.items():
        for role, (masks, params) in models.items():
            teacher = params.get("teacher")
            if teacher not in models or teacher == role:
                continue
            parent = models[teacher][0]
            samples = int(params["samples"])
            for bias in params["biases"]:
                for split in SPLITS:
                    keep = masks[split_mask(bias, split)] & parent[split_mask(bias, split)]
                    if not keep.any():
                        continue
                    student_rates = np.mean([masks[sample_mask(bias, k)][keep] for k in range(samples)], axis=0)
                    teacher_rates = np.mean([parent[sample_mask(bias, k)][keep] for k in range(samples)], axis=0)
                    result = amplification(student_rates, teacher_rates, seed=seed)
                    rows.append({"probe": probe, "model": role, "metric": f"{bias}/{split}/amplification",
                                 "value": result.ratio, "ci95": result.ratio_ci95, "n": int(keep.sum()),
                                 "params": {"bias": bias, "split": split, "teacher": teacher,
                                            "student_rate": result.student_rate, "teacher_rate": result.teacher_rate,
                                            "difference": result.difference,
                                            "difference_ci95": result.difference_ci95,
                                            "pipeline": params.get("pipeline")}})
    return rows
