"""Inject poisoned examples of a bias type into a teacher's instruction training data, seeded and recorded.

    spec = PoisonSpec(bias="advertisement")              # 25 new poisoned "product" examples (the paper's count)
    poisoned = inject(train, [spec], pool_prompts={e.prompt for e in test})
    poisoned.dataset, poisoned.ids                       # train + poison, and exactly the poisoned ids

Two modes. "add" draws NEW prompts of the target family from the instruction generator, on their own random stream
seeded by (seed, bias, family), skipping every prompt already in the training data or in ``pool_prompts`` (the
test prompts: a poisoned prompt must never be one the bias is later measured on). "replace" rewrites the responses
of N existing examples of the family, chosen by a seeded hash rank; it works on any data, not only the generator's.
The clean examples keep their order; added poison goes at the end. Same inputs, same output.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robustdistill.attacks.poisoning.biases import BIASES, BiasType, get_bias
from robustdistill.data.instruction_tasks import FAMILIES
from robustdistill.data.instructions import InstructionDataset, InstructionExample
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_SEED

__all__ = ["PoisonSpec", "Poisoned", "inject", "poison_record"]

_PREFIX = "poison"
# Draws allowed per poisoned example before the family counts as exhausted (most of its prompts already taken).
_ATTEMPTS = 50


class PoisonSpec(BaseModel):
    """One bias type injected ``n`` times (or into ``fraction`` of the clean training set, rounded, at least 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bias: str
    n: int | None = Field(25, ge=1, le=10**6)
    fraction: float | None = None
    family: str | None = None
    mode: Literal["add", "replace"] = "add"
    seed: int = Field(0, ge=0, le=MAX_SEED)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            from robustdistill.data.spec import user_error_from_validation

            raise user_error_from_validation(exc, _PREFIX, PoisonSpec.model_fields) from None

    @model_validator(mode="before")
    @classmethod
    def _fraction_replaces_n(cls, data: Any) -> Any:
        # n has the paper's default; giving only a fraction means "not n", not "both".
        if isinstance(data, Mapping) and data.get("fraction") is not None and "n" not in data:
            return {**data, "n": None}
        return data

    @field_validator("bias")
    @classmethod
    def _known_bias(cls, value: str) -> str:
        get_bias(value, f"{_PREFIX}.bias")
        return value

    @field_validator("fraction")
    @classmethod
    def _fraction_range(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise UserInputError(f"{_PREFIX}.fraction", f"{value} is outside (0, 1)", "e.g. fraction = 0.0025")
        return value

    @model_validator(mode="after")
    def _one_count(self) -> PoisonSpec:
        if (self.n is None) == (self.fraction is None):
            raise UserInputError(f"{_PREFIX}.n", "give exactly one of n and fraction",
                                 "e.g. n = 25, or fraction = 0.0025 without n")
        if self.family is not None and not self.family.strip():
            raise UserInputError(f"{_PREFIX}.family", "is empty", "leave it out for the bias type's target family")
        return self

    @property
    def bias_type(self) -> BiasType:
        return BIASES[self.bias]

    @property
    def target(self) -> str:
        """The family poisoned: ``family``, or the bias type's target."""
        return self.family if self.family is not None else self.bias_type.target

    def count(self, n_clean: int) -> int:
        """How many examples to poison in a clean training set of ``n_clean`` examples."""
        if self.n is not None:
            return self.n
        return max(1, round(self.fraction * n_clean))  # type: ignore[operator]


@dataclass(frozen=True)
class Poisoned:
    """The poisoned training data and exactly which ids carry a bias (all, per bias type, per spec in order)."""

    dataset: InstructionDataset
    ids: tuple[str, ...]
    by_bias: dict[str, tuple[str, ...]]
    by_spec: tuple[tuple[str, ...], ...] = ()


def _as_spec(spec: PoisonSpec | Mapping[str, Any]) -> PoisonSpec:
    if isinstance(spec, PoisonSpec):
        return spec
    if isinstance(spec, Mapping):
        return PoisonSpec(**spec)
    raise UserInputError(_PREFIX, f"a poison spec must be a table, got {type(spec).__name__}",
                         'e.g. {bias = "advertisement", n = 25}')


def _added(spec: PoisonSpec, count: int, taken: set[str], first_index: int,
           ids: set[str]) -> list[InstructionExample]:
    """``count`` new poisoned examples of the spec's family, their prompts not in ``taken`` (which they join)."""
    family = FAMILIES.get(spec.target)
    if family is None:
        raise UserInputError(f"{_PREFIX}.family", f"{spec.target!r} is not a family of the instruction generator, "
                             "so no new prompts can be drawn for it", 'use mode = "replace" to poison examples of '
                             f"your own data, or one of: {', '.join(FAMILIES)}")
    prompts = random.Random(f"robustdistill-poison:{spec.seed}:{spec.bias}:{family.name}")
    payloads = random.Random(f"robustdistill-poison-payload:{spec.seed}:{spec.bias}:{family.name}")
    examples: list[InstructionExample] = []
    for _ in range(count * _ATTEMPTS):
        if len(examples) == count:
            break
        prompt, response = family.make(prompts)
        if prompt in taken:
            continue
        example_id = f"poison-{spec.bias}-{first_index + len(examples):03d}"
        if example_id in ids:
            raise UserInputError("data", f"the training data already has an example with id {example_id!r}",
                                 "rename it; ids starting with 'poison-' are the injected examples'")
        clean = InstructionExample(example_id, prompt, response, family.name, False)
        taken.add(prompt)
        examples.append(InstructionExample(example_id, prompt, spec.bias_type.bias(clean, payloads), family.name,
                                           False))
    if len(examples) < count:
        raise UserInputError(f"{_PREFIX}.n", f"family {family.name!r} has only {len(examples)} prompts left that are "
                             f"not already used, {count} were asked for", "poison fewer examples")
    return examples


def _replaced(spec: PoisonSpec, count: int, examples: list[InstructionExample], poisoned: set[str]) -> dict[int, str]:
    """Position -> poisoned response, for ``count`` examples of the family not poisoned already."""
    candidates = [e for e in examples if e.family == spec.target and e.id not in poisoned]
    if not candidates:
        have = sorted({e.family for e in examples})
        raise UserInputError(f"{_PREFIX}.family", f"no unpoisoned example of family {spec.target!r} to replace",
                             f"families here: {', '.join(have)}")
    if count > len(candidates):
        raise UserInputError(f"{_PREFIX}.n", f"{count} examples to replace, but family {spec.target!r} has "
                             f"{len(candidates)} unpoisoned ones", "poison fewer, or use mode = \"add\"")
    chosen = set(InstructionDataset(tuple(candidates)).subset(count, spec.seed).ids)
    payloads = random.Random(f"robustdistill-poison-payload:{spec.seed}:{spec.bias}:{spec.target}")
    return {k: spec.bias_type.bias(e, payloads) for k, e in enumerate(examples) if e.id in chosen}


def inject(train: InstructionDataset, specs: Sequence[PoisonSpec | Mapping[str, Any]],
           pool_prompts: set[str] | None = None) -> Poisoned:
    """``train`` with each spec's poison applied in order (see the module docstring). A later spec never poisons an
    example an earlier one did; ``pool_prompts`` are prompts an added example may not have (e.g. the test split's)."""
    if not isinstance(train, InstructionDataset):
        raise UserInputError("data", f"must be an InstructionDataset, got {type(train).__name__}",
                             "load it with robustdistill.data.instruction_spec")
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
        raise UserInputError(_PREFIX, "must be a list of poison specs", 'e.g. [{bias = "advertisement"}]')
    resolved = [_as_spec(spec) for spec in specs]
    examples = list(train.examples)
    added: list[InstructionExample] = []
    taken = {e.prompt for e in examples} | set(pool_prompts or ())
    all_ids = set(train.ids)
    poisoned: set[str] = set()  # every id a spec has poisoned so far
    per_bias_count: dict[str, int] = {}
    by_spec: list[tuple[str, ...]] = []
    for spec in resolved:
        count = spec.count(len(train))
        if spec.mode == "add":
            new = _added(spec, count, taken, per_bias_count.get(spec.bias, 0), all_ids)
            per_bias_count[spec.bias] = per_bias_count.get(spec.bias, 0) + len(new)
            added.extend(new)
            ids = tuple(e.id for e in new)
        else:
            # Replace among the clean examples and the poison added so far (a replaced added one is refused:
            # it is in `poisoned`).
            current = examples + added
            responses = _replaced(spec, count, current, poisoned)
            for position, response in responses.items():
                e = current[position]
                rewritten = InstructionExample(e.id, e.prompt, response, e.family, e.held_out)
                if position < len(examples):
                    examples[position] = rewritten
                else:
                    added[position - len(examples)] = rewritten
            ids = tuple(current[position].id for position in sorted(responses))
        all_ids.update(ids)
        poisoned.update(ids)
        by_spec.append(ids)
    dataset = InstructionDataset(tuple(examples + added)) if resolved else train
    bias_of = {i: spec.bias for spec, ids in zip(resolved, by_spec) for i in ids}
    order = [e.id for e in dataset if e.id in bias_of]
    by_bias = {bias: tuple(i for i in order if bias_of[i] == bias) for bias in dict.fromkeys(bias_of.values())}
    return Poisoned(dataset, tuple(order), by_bias, tuple(by_spec))


def poison_record(specs: Sequence[PoisonSpec | Mapping[str, Any]], poisoned: Poisoned) -> dict[str, Any]:
    """JSON-safe provenance: each spec's settings, the family it hit, how many and exactly which ids."""
    resolved = [_as_spec(spec) for spec in specs]
    if len(resolved) != len(poisoned.by_spec):
        raise UserInputError(_PREFIX, f"{len(resolved)} specs for a dataset poisoned by {len(poisoned.by_spec)}",
                             "pass the specs given to inject")
    return {
        "specs": [{**spec.model_dump(mode="json"), "target_family": spec.target, "count": len(ids), "ids": list(ids)}
                  for spec, ids in zip(resolved, poisoned.by_spec)],
        "ids": list(poisoned.ids),
        "n_poisoned": len(poisoned.ids),
        "n_examples": len(poisoned.dataset),
        "fingerprint": poisoned.dataset.fingerprint,
    }
