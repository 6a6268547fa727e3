"""Instruction data for the language-model pipelines: records, a fingerprinted dataset, member/non-member pools and
loaders for Alpaca-style JSONL, ShareGPT-style JSONL and Hugging Face datasets saved on disk.

    from robustdistill.data.instructions import load_alpaca_jsonl, split_pool
    data = load_alpaca_jsonl("train.jsonl")              # InstructionDataset, data.fingerprint is its sha256
    members, nonmembers = split_pool(data, 0.5, seed=0)  # one pool, split at random (the LM MIA's ground truth)

Every loader treats its input as hostile: the file's size is checked from the file system before it is read, lines
are read with a bound, text must be UTF-8, JSON is only parsed (never evaluated), and each bad record is refused with
a :class:`UserInputError` naming the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from robustdistill.errors import UserInputError
from robustdistill.limits import check_seed
from robustdistill.utils import write_text_atomic

logger = logging.getLogger(__name__)

# The largest JSONL file a loader reads: the biggest public ShareGPT dumps are ~700 MB, and parsed into Python strings
# a file takes 2-4x its size in memory, so 1 GiB is generous for real data and still fits any machine we train on.
MAX_JSONL_BYTES = 1 << 30
# One JSONL record (a whole conversation); far above any real conversation, far below a runaway line without "\n".
MAX_LINE_BYTES = 16 << 20
# A saved Hugging Face dataset's Arrow files, summed: the same bound as a JSONL file.
MAX_ARROW_BYTES = MAX_JSONL_BYTES

ShareGPTTurns = Literal["first", "all"]
_HUMAN_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "model"})


@dataclass(frozen=True)
class InstructionExample:
    """One prompt and its reference response. ``id`` is stable (membership ground truth is a set of ids);
    ``held_out`` marks families kept out of training, for "untargeted" evaluation on unseen tasks."""

    id: str
    prompt: str
    response: str
    family: str
    held_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "response": self.response, "family": self.family,
                "held_out": self.held_out}


@dataclass(frozen=True, eq=False)
class InstructionDataset:
    """An ordered, non-empty tuple of examples with unique ids and a sha256 ``fingerprint`` of their content."""

    examples: tuple[InstructionExample, ...]
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        examples = tuple(self.examples)
        if not examples:
            raise UserInputError("data", "the instruction dataset is empty", "give it at least one example")
        seen: set[str] = set()
        for example in examples:
            if example.id in seen:
                raise UserInputError("data", f"id {example.id!r} appears twice", "give every example a unique id")
            seen.add(example.id)
        digest = hashlib.sha256()
        for example in examples:
            digest.update(json.dumps(example.to_json(), sort_keys=True, ensure_ascii=True).encode())
            digest.update(b"\n")
        object.__setattr__(self, "examples", examples)
        object.__setattr__(self, "fingerprint", digest.hexdigest())

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[InstructionExample]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> InstructionExample:
        return self.examples[index]

    def __repr__(self) -> str:
        return f"InstructionDataset(n={len(self)}, families={self.families()}, fingerprint={self.fingerprint[:12]}...)"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(example.id for example in self.examples)

    def families(self) -> tuple[str, ...]:
        """Family names in order of first appearance."""
        return tuple(dict.fromkeys(example.family for example in self.examples))

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for example in self.examples:
            counts[example.family] = counts.get(example.family, 0) + 1
        return counts

    def select(self, keep: Iterable[str]) -> InstructionDataset:
        """The examples whose ids are in ``keep``, in this dataset's order."""
        wanted = set(keep)
        return InstructionDataset(tuple(e for e in self.examples if e.id in wanted))

    def where(self, *, family: str | None = None, held_out: bool | None = None) -> InstructionDataset:
        """The examples of one family and/or with the given held-out flag, e.g. ``where(held_out=False)`` to train."""
        kept = tuple(e for e in self.examples
                     if (family is None or e.family == family) and (held_out is None or e.held_out == held_out))
        if not kept:
            raise UserInputError("family" if family is not None else "held_out",
                                 f"no example has family={family!r}, held_out={held_out!r}",
                                 f"families here: {', '.join(self.families())}")
        return InstructionDataset(kept)

    def subset(self, n: int | None, seed: int = 0) -> InstructionDataset:
        """``n`` examples chosen by ``seed`` (kept in this dataset's order); None (or n >= len) -> self."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise UserInputError("n", f"a subset of {n} examples is empty", "use a positive number of examples")
        return self.select(sorted(self.ids, key=lambda i: _rank(seed, i))[:n])


def _rank(seed: int, example_id: str) -> str:
    # A pure function of (seed, id): an example's rank never depends on the rest of the pool or on library versions.
    return hashlib.sha256(f"{seed}\0{example_id}".encode()).hexdigest()


def split_pool(dataset: InstructionDataset, fraction: float,
               seed: int) -> tuple[InstructionDataset, InstructionDataset]:
    """(members, non-members): a seeded random split of ONE pool, ``fraction`` of each family becoming members.

    Drawing both sides from one pool, stratified by family, keeps members and non-members identically distributed,
    so a membership attack measures membership and not a distribution shift (Duan et al. 2024; Das et al. 2024).
    Ids are kept, so the member ids are the attack's ground truth. Per family, round(fraction * count) members.
    """
    check_seed("seed", seed)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise UserInputError("fraction", f"must be a number strictly between 0 and 1, got {fraction!r}", "e.g. 0.5")
    members: list[str] = []
    for family in dataset.families():
        ids = sorted((e.id for e in dataset if e.family == family), key=lambda i: _rank(seed, i))
        members.extend(ids[: round(fraction * len(ids))])
    if not members or len(members) == len(dataset):
        raise UserInputError("fraction", f"{fraction} of {len(dataset)} examples leaves one side empty",
                             "use a larger pool or a fraction nearer 0.5")
    chosen = set(members)
    return dataset.select(chosen), dataset.select(i for i in dataset.ids if i not in chosen)


# --------------------------------------------------------------------------------------------------------------
# JSONL


def _check_size(path: Path, field_name: str, limit: int) -> None:
    """Refuse a missing path, a non-file or a file over ``limit`` bytes, from the file system's metadata alone."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise UserInputError(field_name, f"cannot read {path}: {exc.strerror or exc}", "check the path") from None
    if not path.is_file():
        raise UserInputError(field_name, f"{path} is not a file", "point at a .jsonl file")
    if stat.st_size > limit:
        raise UserInputError(field_name, f"{path} is {stat.st_size:,} bytes, more than the {limit:,} a loader reads",
                             "split the file, or load a subset of it")


def _jsonl_records(path: Path, field_name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line; bounded reads, strict UTF-8, no code ever run."""
    _check_size(path, field_name, MAX_JSONL_BYTES)
    total = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            total += len(raw)
            where = f"{path} line {number}"
            if len(raw) > MAX_LINE_BYTES:  # a runaway line without "\n": refused after a bounded read
                raise UserInputError(field_name, f"{where} is longer than {MAX_LINE_BYTES:,} bytes",
                                     "one record per line")
            if total > MAX_JSONL_BYTES:  # a file that grew while read, or a device
                raise UserInputError(field_name, f"{path} is more than {MAX_JSONL_BYTES:,} bytes",
                                     "split the file, or load a subset of it")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserInputError(field_name, f"{where} is not UTF-8 (byte {exc.start} is 0x{raw[exc.start]:02x})",
                                     "save the file as UTF-8") from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise UserInputError(field_name, f"{where} is not valid JSON ({str(exc)[:80]})",
                                     "one JSON object per line") from None
            if not isinstance(record, dict):
                raise UserInputError(field_name, f"{where} is a JSON {type(record).__name__}, not an object",
                                     "one JSON object per line")
            yield number, record


def _text(value: Any, where: str, name: str, field_name: str, *, required: bool = True) -> str:
    """A record's text field as a str: refuses a wrong type, an empty required value and unencodable surrogates."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        problem = "is missing" if value is None else f"is a {type(value).__name__}, not a string"
        raise UserInputError(field_name, f"{where}: field {name!r} {problem}", f"give {name!r} as a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" parses as JSON but is no text at all
        raise UserInputError(field_name, f"{where}: field {name!r} holds a lone surrogate", "fix the escape") from None
    if required and not value.strip():
        raise UserInputError(field_name, f"{where}: field {name!r} is empty", f"give every record a {name!r}")
    return value


def _meta(record: Mapping[str, Any], where: str, field_name: str, default_id: str,
          family: str) -> tuple[str, str, bool]:
    """Optional "id", "family" and "held_out" fields (written by :func:`write_alpaca_jsonl`), else the defaults."""
    example_id = _text(record["id"], where, "id", field_name) if "id" in record else default_id
    family = _text(record["family"], where, "family", field_name) if "family" in record else family
    held_out = record.get("held_out", False)
    if not isinstance(held_out, bool):
        raise UserInputError(field_name, f"{where}: field 'held_out' is not true/false", "use a JSON boolean")
    return example_id, family, held_out


def _dataset(examples: list[InstructionExample], source: Path | str, field_name: str) -> InstructionDataset:
    if not examples:
        raise UserInputError(field_name, f"{source} holds no examples", "point at a file with at least one record")
    seen: dict[str, int] = {}
    for position, example in enumerate(examples):
        if example.id in seen:
            raise UserInputError(field_name, f"{source}: id {example.id!r} appears twice (records "
                                 f"{seen[example.id] + 1} and {position + 1})", "give every record a unique id")
        seen[example.id] = position
    logger.info("loaded %d instruction examples from %s", len(examples), source)
    return InstructionDataset(tuple(examples))


def alpaca_prompt(instruction: str, context: str) -> str:
    """Alpaca's optional "input" is appended to the instruction after a blank line."""
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def load_alpaca_jsonl(path: str | os.PathLike[str], *, family: str = "instruction",
                      field_name: str = "data.path") -> InstructionDataset:
    """Alpaca-style JSONL: one {"instruction", "input"?, "output"} object per line.

    ids are "line-<n>" unless a record has an "id"; a record's "family" and "held_out" override the defaults.
    """
    path = Path(path)
    examples = []
    for number, record in _jsonl_records(path, field_name):
        where = f"{path} line {number}"
        instruction = _text(record.get("instruction"), where, "instruction", field_name)
        context = _text(record.get("input"), where, "input", field_name, required=False)
        output = _text(record.get("output"), where, "output", field_name)
        example_id, fam, held_out = _meta(record, where, field_name, f"line-{number}", family)
        examples.append(InstructionExample(example_id, alpaca_prompt(instruction, context), output, fam, held_out))
    return _dataset(examples, path, field_name)


def _sharegpt_pairs(turns: Any, where: str, field_name: str) -> list[tuple[str, str]]:
    """Each human turn with the assistant turn right after it (system turns skipped)."""
    if not isinstance(turns, list):
        raise UserInputError(field_name, f"{where}: field 'conversations' is missing or not a list",
                             'give "conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]')
    roles: list[tuple[str, str]] = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserInputError(field_name, f"{where}: conversations[{k}] is not an object", 'use {"from", "value"}')
        role = _text(turn.get("from"), where, f"conversations[{k}].from", field_name)
        value = _text(turn.get("value"), where, f"conversations[{k}].value", field_name)
        if role not in _HUMAN_ROLES | _ASSISTANT_ROLES | {"system"}:
            raise UserInputError(field_name, f"{where}: conversations[{k}].from is {role!r}",
                                 "use 'human', 'gpt' or 'system'")
        roles.append((role, value))
    pairs = [(roles[k][1], roles[k + 1][1]) for k in range(len(roles) - 1)
             if roles[k][0] in _HUMAN_ROLES and roles[k + 1][0] in _ASSISTANT_ROLES]
    if not pairs:
        raise UserInputError(field_name, f"{where}: field 'conversations' has no human turn followed by a gpt turn",
                             "drop the record or complete the conversation")
    return pairs


def load_sharegpt_jsonl(path: str | os.PathLike[str], *, turns: ShareGPTTurns = "first", family: str = "instruction",
                        field_name: str = "data.path") -> InstructionDataset:
    """ShareGPT-style JSONL: one {"conversations": [{"from": "human"|"gpt", "value"}, ...]} object per line.

    ``turns="first"`` (the default) keeps the first human turn as the prompt and the gpt turn after it as the
    response: one example per conversation, so a conversation is one unit of membership. ``turns="all"`` keeps every
    human -> gpt pair as its own example (ids "<id>#<k>"); earlier turns are NOT prepended, so later pairs lose
    their context. "user"/"assistant" are accepted for "human"/"gpt"; "system" turns are skipped.
    """
    if turns not in ("first", "all"):
        raise UserInputError("turns", f"{turns!r} is not a choice", "use 'first' or 'all'")
    path = Path(path)
    examples = []
    for number, record in _jsonl_records(path, field_name):
        where = f"{path} line {number}"
        pairs = _sharegpt_pairs(record.get("conversations"), where, field_name)
        base, fam, held_out = _meta(record, where, field_name, f"line-{number}", family)
        for k, (prompt, response) in enumerate(pairs if turns == "all" else pairs[:1]):
            example_id = f"{base}#{k}" if turns == "all" else base
            examples.append(InstructionExample(example_id, prompt, response, fam, held_out))
    return _dataset(examples, path, field_name)


def write_alpaca_jsonl(dataset: InstructionDataset, path: str | os.PathLike[str]) -> None:
    """Write ``dataset`` as Alpaca-style JSONL (with "id", "family", "held_out"), atomically; never over a file."""
    path = Path(path)
    if path.exists():
        raise UserInputError("path", f"{path} already exists", "choose a new file name")
    lines = [json.dumps({"id": e.id, "instruction": e.prompt, "input": "", "output": e.response, "family": e.family,
                         "held_out": e.held_out}, ensure_ascii=False) for e in dataset]
    write_text_atomic(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Hugging Face datasets saved with save_to_disk


def _open_saved(root: Path, split: str, field_name: str) -> Any:
    from datasets import Dataset, DatasetDict, load_from_disk

    if not root.is_dir():
        raise UserInputError(field_name, f"folder {root} does not exist", "point at a save_to_disk folder")
    try:
        saved = load_from_disk(str(root))  # memory-maps the Arrow files: nothing is read yet
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError or JSON errors for foreign folders
        raise UserInputError(field_name, f"{root} is not a Hugging Face dataset saved with save_to_disk ({exc})",
                             "create it with Dataset.save_to_disk") from None
    if isinstance(saved, DatasetDict):
        if split not in saved:
            raise UserInputError("split", f"{root} has no split {split!r} (it has {', '.join(saved)})",
                                 "name one of them")
        saved = saved[split]
    if not isinstance(saved, Dataset):
        raise UserInputError(field_name, f"{root} holds a {type(saved).__name__}, not a Dataset", "save a Dataset")
    size = sum(Path(f["filename"]).stat().st_size for f in saved.cache_files)
    if size > MAX_ARROW_BYTES:
        raise UserInputError(field_name, f"{root} holds {size:,} bytes of Arrow data, more than the "
                             f"{MAX_ARROW_BYTES:,} a loader reads", "save a subset of it")
    if len(saved) == 0:
        raise UserInputError(field_name, f"the saved split {split!r} of {root} is empty", "add examples to it")
    return saved


def load_instructions_from_disk(root: str | os.PathLike[str], *, split: str = "train",
                                prompt_column: str = "instruction", response_column: str = "output",
                                input_column: str | None = "input", id_column: str | None = "id",
                                family_column: str | None = "family", family: str = "instruction",
                                field_name: str = "data.root") -> InstructionDataset:
    """A Dataset (or one split of a DatasetDict) saved with ``save_to_disk``, read locally, never downloaded.

    ``prompt_column`` and ``response_column`` are required; the optional columns are used when present (``input``
    is appended to the prompt as in Alpaca). Rows without an id column get "row-<n>".
    """
    root = Path(root)
    saved = _open_saved(root, split, field_name)
    for name in (prompt_column, response_column):
        if name not in saved.column_names:
            raise UserInputError(f"{field_name}: column", f"{name!r} is not a column of {root} (it has "
                                 f"{', '.join(saved.column_names)})", "name the prompt/response columns")
    optional = {key: name for key, name in (("input", input_column), ("id", id_column), ("family", family_column))
                if name is not None and name in saved.column_names}
    columns = [prompt_column, response_column, *optional.values()]
    examples = []
    for start, batch in _batches(saved.with_format(None).select_columns(columns)):
        for offset in range(len(batch[prompt_column])):
            row = start + offset
            where = f"{root} row {row}"
            prompt = _text(batch[prompt_column][offset], where, prompt_column, field_name)
            context = _text(batch[optional["input"]][offset], where, optional["input"], field_name,
                            required=False) if "input" in optional else ""
            response = _text(batch[response_column][offset], where, response_column, field_name)
            example_id = str(batch[optional["id"]][offset]) if "id" in optional else f"row-{row}"
            fam = _text(batch[optional["family"]][offset], where, optional["family"], field_name) \
                if "family" in optional else family
            examples.append(InstructionExample(example_id, alpaca_prompt(prompt, context), response, fam))
    return _dataset(examples, root, field_name)


def _batches(dataset: Any, size: int = 1000) -> Iterator[tuple[int, dict[str, Sequence[Any]]]]:
    for start in range(0, len(dataset), size):
        yield start, dataset[start : start + size]
