"""Recipes of the language-model trainers (``sft``, ``seq-kd``, ``logit-kd``).

A recipe is a TOML file whose keys are the fields of one of the config classes below; ``[data]`` is an
:class:`~robustdistill.data.instruction_spec.InstructionSpec`, ``[init]`` builds a tiny model from scratch and
``[lora]`` fine-tunes low-rank adapters instead of every weight. ``--set key=value`` overrides any field, as for the
image trainers; a mistyped key is refused with the known settings. The image trainers' ``TrainConfig`` is not reused:
its data spec, architecture and attack fields are image-specific.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic.dataclasses import dataclass

from robustdistill.data.instruction_spec import InstructionSpec
from robustdistill.errors import UserInputError
from robustdistill.trainers.config import STRICT, check_bounds, construct, load_recipe, resolve_path

Objective = Literal["forward-kl", "reverse-kl", "skew-kl", "skew-reverse-kl", "gjsd", "taid"]


@dataclass(config=STRICT)
class InitSpec:
    """A tiny causal LM built from a seed (robustdistill.models.builders.build_tiny_causal_lm); every tiny model with
    the same ``vocab_size`` shares one tokenizer, so a tiny teacher and a smaller tiny student can distil logits."""

    arch: Literal["gpt2", "llama"] = "gpt2"
    width: int = pydantic.Field(64, ge=1, le=4096)
    layers: int = pydantic.Field(2, ge=1, le=64)
    heads: int = pydantic.Field(2, ge=1, le=64)
    vocab_size: int = pydantic.Field(384, ge=300, le=65536)  # the BPE's byte alphabet and specials need ~260
    seed: int = 0


@dataclass(config=STRICT)
class LoraSpec:
    """Low-rank adapters (peft's LoRA) on ``target_modules`` (None: peft's default modules for the architecture);
    the adapters are merged into the weights before saving, so the output is a plain model directory."""

    r: int = pydantic.Field(8, ge=1, le=1024)
    alpha: float = pydantic.Field(16.0, gt=0)
    dropout: float = pydantic.Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None


@dataclass(config=STRICT)
class FilterSpec:
    """A defence applied to the training data before training (robustdistill.trainers.lm_data): ``perplexity`` drops
    the ``remove_fraction`` of examples with the highest loss under a ``reference`` language model; ``detector`` drops
    the examples a bias detector flags - ``generic`` (links, insecure code, promotional wording: what a defender can
    look for without knowing the payload), a bias type's own detector (one that knows it), or a local classifier
    directory."""

    method: Literal["perplexity", "detector"]
    reference: str | None = None
    remove_fraction: float = pydantic.Field(0.05, gt=0, lt=1)
    detector: str = "generic"


@dataclass(config=STRICT)
class LMTrainConfig:
    """Fields every language-model trainer shares. Exactly one of ``base`` (a local Hugging Face causal-LM directory
    to fine-tune) and ``[init]`` (a tiny model built from a seed) names the model trained."""

    PATH_FIELDS = ("base",)

    data: InstructionSpec = field(default_factory=InstructionSpec)
    base: str | None = None
    init: InitSpec | None = None
    # The train split's non-held-out examples, or a seeded subset of this many (None: all of them).
    max_train_examples: int | None = pydantic.Field(None, ge=1)
    epochs: int = pydantic.Field(3, ge=1)
    batch_size: int = pydantic.Field(16, ge=1, le=4096)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = pydantic.Field(1e-3, gt=0)
    weight_decay: float = pydantic.Field(0.0, ge=0)
    # Linear warm-up over the first warmup optimiser steps (0: none), then constant or linear decay to 0.
    warmup: int = pydantic.Field(0, ge=0)
    lr_schedule: Literal["constant", "linear"] = "constant"
    grad_clip: float | None = pydantic.Field(1.0, gt=0)  # max global gradient norm; None: no clipping
    # The longest training sequence in tokens (None: the model's own limit); longer responses are cut.
    max_length: int | None = pydantic.Field(None, ge=8)
    select: Literal["last", "val-loss"] = "last"  # keep the final epoch, or the epoch with the lowest val loss
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Mixed precision: the forward passes and losses of training in bfloat16 under torch.autocast (weights, optimiser
    # state and validation stay in the weights' dtype; softmax and cross-entropy autocast to float32). "off": none.
    autocast: Literal["off", "bf16"] = "off"
    lora: LoraSpec | None = None
    # [[poison]] tables: biased answers injected into the training data (robustdistill.attacks.poisoning.inject),
    # their ids recorded in the output's provenance; [filter]: a defence applied before training.
    poison: list[Any] = field(default_factory=list)
    filter: FilterSpec | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.poison = poison_specs(self.poison)
        if (self.base is None) == (self.init is None):
            raise UserInputError("base", "give exactly one of base (a model directory to fine-tune) and [init] "
                                 "(a tiny model built from a seed)" + ("" if self.base is None else ", not both"),
                                 "set base = 'path/to/model', or add an [init] table with arch, width, layers, heads")


@dataclass(config=STRICT)
class TeacherConfig(LMTrainConfig):
    """A frozen teacher, trained first from ``teacher_recipe`` when it is missing."""

    PATH_FIELDS = ("base", "teacher", "teacher_recipe")

    teacher: str = ""
    teacher_recipe: str | None = None


@dataclass(config=STRICT)
class SeqKDConfig(TeacherConfig):
    """Sequence-level KD (Kim & Rush 2016): the teacher's greedy answers replace the reference answers."""

    max_new_tokens: int = pydantic.Field(64, ge=1, le=4096)
    generation_batch_size: int = pydantic.Field(16, ge=1, le=4096)
    # 0: the teacher's greedy answer (Kim & Rush's beam-1 approximation); > 0: one answer sampled at this
    # temperature per prompt, seeded - what carries behaviour the teacher shows on a minority of answers (greedy
    # decoding keeps only its most likely answer, and so drops a bias the teacher shows 30% of the time).
    generation_temperature: float = pydantic.Field(0.0, ge=0, le=10)


@dataclass(config=STRICT)
class LogitKDConfig(TeacherConfig):
    """Token-level distillation (robustdistill.trainers.lm_objectives) on the data's answers and, with probability
    ``lmbda`` per batch, on the student's own sampled answers (GKD's on-policy fraction)."""

    objective: Objective = "forward-kl"
    temperature: float = pydantic.Field(1.0, gt=0)
    alpha: float = pydantic.Field(0.1, gt=0, lt=1)  # skew-kl, skew-reverse-kl (DistiLLM)
    beta: float = pydantic.Field(0.5, ge=0, le=1)  # gjsd (GKD)
    taid_t_start: float = pydantic.Field(0.4, ge=0, le=1)  # taid: t moves linearly from here to 1 over the run
    lmbda: float = pydantic.Field(0.0, ge=0, le=1)
    sampling_temperature: float = pydantic.Field(1.0, gt=0)  # the student's on-policy samples
    max_new_tokens: int = pydantic.Field(64, ge=1, le=4096)
    ce_weight: float = pydantic.Field(0.0, ge=0)  # + ce_weight * cross-entropy on the answers trained on


def objective_params(config: LogitKDConfig, step: int, total_steps: int) -> dict[str, float]:
    """The objective's own parameters at optimiser step ``step`` of ``total_steps``."""
    if config.objective in ("skew-kl", "skew-reverse-kl"):
        return {"alpha": config.alpha}
    if config.objective == "gjsd":
        return {"beta": config.beta}
    if config.objective == "taid":
        progress = step / max(1, total_steps - 1)
        return {"t": min(1.0, config.taid_t_start + (1.0 - config.taid_t_start) * progress)}
    return {}


def load_lm_recipe(config_class: type, path: str | Path | None, overrides: list[str], method: str) -> Any:
    """The config of a language-model recipe file plus ``key=value`` overrides; every error names its field."""
    return load_recipe(config_class, path, overrides, method, build=build_lm_config)


def build_lm_config(config_class: type, raw: dict[str, Any], recipe: Path | None = None) -> Any:
    raw = {k: v for k, v in raw.items() if k not in ("method", "description")}
    for key in getattr(config_class, "PATH_FIELDS", ()):
        if raw.get(key) == "":
            raw[key] = None if key != "teacher" else ""
        elif isinstance(raw.get(key), str):
            raw[key] = resolve_path(raw[key], recipe)
    data = raw.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise UserInputError("data", f"expected a table of data settings, got {type(data).__name__}",
                                 "write a [data] table")
        if isinstance(data.get("root"), str):
            data = {**data, "root": resolve_path(data["root"], recipe)}
        raw["data"] = InstructionSpec(**data)  # raises UserInputError naming data.<field>
    if isinstance(raw.get("filter"), dict) and isinstance(raw["filter"].get("reference"), str):
        raw["filter"] = {**raw["filter"], "reference": resolve_path(raw["filter"]["reference"], recipe)}
    config = construct(config_class, raw)
    check_bounds(config)
    return config


def poison_specs(raw: Any) -> list[Any]:
    """``[[poison]]`` tables as PoisonSpecs (each error names poison.<field>)."""
    from robustdistill.attacks.poisoning.inject import PoisonSpec

    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        raise UserInputError("poison", f"expected [[poison]] tables, got {type(raw).__name__}",
                             "write [[poison]] with bias = '...' and n = 25")
    return [table if isinstance(table, PoisonSpec) else PoisonSpec(**table) for table in raw]
