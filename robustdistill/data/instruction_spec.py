"""The instruction data spec: which instruction data a language-model recipe or suite uses, and its seeded split.

    [data]
    kind = "instructions"        # the procedural generator (offline); or "alpaca-jsonl", "sharegpt-jsonl",
    n = 600                      # "hf-instructions" (a save_to_disk folder) with root = the file or folder
    seed = 0

The pool is split, stratified by task family, into train / val / test with ``split_seed``: the split is a pure
function of the spec, so the teacher's fine-tuning set (its members, recorded by id in its provenance) and the
held-out non-members of a membership audit come from ONE pool by a random split - the condition under which a
language-model membership attack measures membership and not a distribution shift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robustdistill.data.instruction_tasks import FAMILIES, generate_instructions
from robustdistill.data.instructions import (InstructionDataset, load_alpaca_jsonl, load_instructions_from_disk,
                                             load_sharegpt_jsonl, split_pool)
from robustdistill.errors import UserInputError
from robustdistill.limits import MAX_SEED

InstructionKind = Literal["instructions", "alpaca-jsonl", "sharegpt-jsonl", "hf-instructions"]
INSTRUCTION_KINDS: tuple[str, ...] = ("instructions", "alpaca-jsonl", "sharegpt-jsonl", "hf-instructions")
_PREFIX = "data"


class InstructionSpec(BaseModel):
    """Instruction data and its seeded train / val / test split (``train`` is what a teacher is fine-tuned on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: InstructionKind = "instructions"
    root: str | None = None
    # The procedural generator: n examples over ``families`` (all eleven by default), drawn with ``seed``.
    n: int = Field(600, ge=1, le=10**6)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    families: tuple[str, ...] | None = None
    # The fraction of prompts with random junk appended (the generator only): a teacher trained on it refuses
    # harmful requests whatever follows them, so a jailbreak suffix has to be optimised.
    noise: float = Field(0.0, ge=0, le=1)
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    # ShareGPT: the first exchange of each conversation, or every exchange as its own example.
    turns: Literal["first", "all"] = "first"
    # A saved Hugging Face dataset: which stored split, and which columns hold the prompt and the response.
    hf_split: str = "train"
    prompt_column: str = "instruction"
    response_column: str = "output"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _user_error(exc) from None

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _fraction(cls, value: float, info: Any) -> float:
        if not 0.0 < value < 1.0:
            raise UserInputError(f"{_PREFIX}.{info.field_name}", f"{value} is outside (0, 1)", "use e.g. 0.1 or 0.3")
        return value

    @field_validator("families")
    @classmethod
    def _families_known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            unknown = [name for name in value if name not in FAMILIES]
            if unknown or not value:
                raise UserInputError(f"{_PREFIX}.families", f"unknown family {unknown[0]!r}" if unknown else "is empty",
                                     f"use some of: {', '.join(FAMILIES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> InstructionSpec:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise UserInputError(f"{_PREFIX}.val_fraction", f"val_fraction + test_fraction = "
                                 f"{self.val_fraction + self.test_fraction:g} leaves no training data",
                                 "keep their sum below 1, e.g. 0.1 and 0.3")
        if self.kind != "instructions" and self.root is None:
            raise UserInputError(f"{_PREFIX}.root", f"kind {self.kind!r} needs a root (the file or folder)",
                                 "set data.root")
        if self.kind == "instructions" and self.root is not None:
            raise UserInputError(f"{_PREFIX}.root", "the procedural generator reads no files",
                                 "remove root, or set kind to the format of your file")
        return self

    def input_values(self) -> int | None:
        return None  # text: no image size (the suite's threat-model checks ask every spec)

    def resolved_root(self) -> Path:
        if self.root is None:
            raise UserInputError(f"{_PREFIX}.root", f"kind {self.kind!r} needs a root", "set data.root")
        return Path(self.root).expanduser().resolve()

    def identity(self) -> str:
        """JSON of the fields that define the data, without the root (content is covered by the fingerprint)."""
        return self.model_dump_json(exclude={"root"})

    def cache_key(self) -> str:
        spec = self if self.root is None else self.model_copy(update={"root": str(self.resolved_root())})
        return spec.model_dump_json()

    def pool(self) -> InstructionDataset:
        """Every example the spec names, before the split."""
        field_name = f"{_PREFIX}.root"
        if self.kind == "instructions":
            return generate_instructions(self.n, self.seed, self.families, self.noise)
        if self.kind == "alpaca-jsonl":
            return load_alpaca_jsonl(self.resolved_root(), field_name=field_name)
        if self.kind == "sharegpt-jsonl":
            return load_sharegpt_jsonl(self.resolved_root(), turns=self.turns, field_name=field_name)
        return load_instructions_from_disk(self.resolved_root(), split=self.hf_split, prompt_column=self.prompt_column,
                                           response_column=self.response_column, field_name=field_name)

    def splits(self) -> dict[str, InstructionDataset]:
        """{"train", "val", "test"}: a stratified random split of the pool by ``split_seed``."""
        pool = self.pool()
        train, rest = split_pool(pool, 1.0 - self.val_fraction - self.test_fraction, self.split_seed)
        val, test = split_pool(rest, self.val_fraction / (self.val_fraction + self.test_fraction), self.split_seed + 1)
        return {"train": train, "val": val, "test": test}

    def load(self, split: str) -> InstructionDataset:
        splits = self.splits()
        if split not in splits:
            raise UserInputError(f"{_PREFIX}.split", f"{split!r} is not a split", "use train, val or test")
        return splits[split]


def _user_error(exc: ValidationError) -> UserInputError:
    from robustdistill.data.spec import user_error_from_validation

    return user_error_from_validation(exc, _PREFIX, InstructionSpec.model_fields)


def is_instruction_kind(kind: Any) -> bool:
    return isinstance(kind, str) and kind in INSTRUCTION_KINDS
