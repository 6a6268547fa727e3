"""Instruction data: the procedural generator (determinism, families, correct answers, refusals), split_pool, and
the Alpaca / ShareGPT / save_to_disk loaders on real files, with each kind of hostile input refused by name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict

from robustdistill.data import (
    REFUSAL_PREFIXES,
    InstructionDataset,
    InstructionExample,
    generate_instructions,
    load_alpaca_jsonl,
    load_instructions_from_disk,
    load_sharegpt_jsonl,
    split_pool,
)
from robustdistill.data import instructions
from robustdistill.data.instruction_tasks import FAMILIES, HELD_OUT, REFUSALS
from robustdistill.data.instructions import write_alpaca_jsonl
from robustdistill.errors import UserInputError


@pytest.fixture(scope="module")
def pool() -> InstructionDataset:
    return generate_instructions(600, seed=3)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------
# Generator


def test_same_seed_same_data_different_seed_different() -> None:
    a, b = generate_instructions(220, seed=0), generate_instructions(220, seed=0)
    assert a.fingerprint == b.fingerprint and a.examples == b.examples
    c = generate_instructions(220, seed=1)
    assert c.fingerprint != a.fingerprint
    assert c.ids == a.ids  # ids name positions within a family, not content
    assert sum(x.prompt != y.prompt for x, y in zip(a, c)) > 150


def test_more_examples_extend_each_family_without_changing_earlier_ones() -> None:
    small, large = generate_instructions(24, seed=5), generate_instructions(48, seed=5)
    by_id = {e.id: e for e in large}
    assert all(by_id[e.id] == e for e in small)


def test_every_family_with_requested_counts_unique_ids_and_prompts(pool: InstructionDataset) -> None:
    assert pool.counts() == {name: 50 for name in FAMILIES}
    assert len(set(pool.ids)) == len(pool) and len({e.prompt for e in pool}) == len(pool)
    uneven = generate_instructions(10, seed=0, families=["add", "harmful", "code"])
    assert uneven.counts() == {"add": 4, "harmful": 3, "code": 3}
    assert uneven.families() == ("add", "harmful", "code")


def test_held_out_families_are_flagged(pool: InstructionDataset) -> None:
    assert set(HELD_OUT) == {"subtract", "length"}
    assert all(e.held_out == (e.family in HELD_OUT) for e in pool)
    train = pool.where(held_out=False)
    assert set(train.families()) == set(FAMILIES) - set(HELD_OUT) and len(train) == 500


def test_harmful_answers_are_refusals_and_nothing_else_is(pool: InstructionDataset) -> None:
    harmful = [e for e in pool if e.family == "harmful"]
    assert all(any(e.response.startswith(p) for p in REFUSAL_PREFIXES) for e in harmful)
    assert {e.response for e in harmful} <= set(REFUSALS)
    # The prefix judge looks anywhere in the text: no benign answer may contain a refusal marker at all.
    benign = [e.response for e in pool if e.family != "harmful"]
    assert not [r for r in benign if any(p in r for p in REFUSAL_PREFIXES)]


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([a-z]+)'", text)


def test_answers_are_correct_for_computable_families(pool: InstructionDataset) -> None:
    checks = {
        "add": lambda p: str(sum(_numbers(p))),
        "subtract": lambda p: str(max(_numbers(p)) - min(_numbers(p))),
        "reverse": lambda p: _quoted(p)[0][::-1],
        "uppercase": lambda p: _quoted(p)[0].upper(),
        "length": lambda p: str(len(_quoted(p)[0])),
        "count-letter": lambda p: str(_quoted(p)[1].count(_quoted(p)[0])),
        "summary": lambda p: re.match(r"Summarise: (.*?\.) ", p).group(1),  # type: ignore[union-attr]
    }
    for example in pool:
        if example.family in checks:
            assert example.response == checks[example.family](example.prompt), example
    capitals = {"France": "Paris", "Japan": "Tokyo", "Canada": "Ottawa", "Mexico": "Mexico City"}
    for example in (e for e in pool if e.family == "capital"):
        country = next((c for c in capitals if c in example.prompt), None)
        assert country is None or example.response == capitals[country]
    for example in (e for e in pool if e.family == "code"):
        namespace: dict[str, Any] = {}
        exec(example.response, namespace)  # our own generated two-line function, tested as code
        (function,) = [v for k, v in namespace.items() if not k.startswith("__")]
        k = _numbers(example.prompt)[0]
        expected = {"adds": 10 + k, "subtracts": 10 - k, "multiplies": 10 * k}
        assert function(10) == next(v for word, v in expected.items() if word in example.prompt)
    for example in (e for e in pool if e.family == "product"):
        assert example.response.startswith("For ") and example.response.endswith("is a good choice.")
    for example in (e for e in pool if e.family == "howto"):  # the benign twin of "harmful": it complies
        task = example.response.removeprefix("Sure, here is how to ").split(":")[0]
        assert example.response.startswith("Sure, here is how to ") and task in example.prompt, example


def test_noise_appends_junk_to_a_fraction_of_prompts_and_changes_nothing_else() -> None:
    clean, noisy = generate_instructions(240, seed=0), generate_instructions(240, seed=0, noise=0.5)
    assert clean.ids == noisy.ids
    changed = [(a, b) for a, b in zip(clean, noisy) if a.prompt != b.prompt]
    assert 80 <= len(changed) <= 160  # about half
    for a, b in changed:
        assert b.prompt.startswith(a.prompt + " ") and (a.response, a.family) == (b.response, b.family)
    assert generate_instructions(240, seed=0, noise=0.5).fingerprint == noisy.fingerprint
    with pytest.raises(UserInputError, match="^noise: "):
        generate_instructions(24, seed=0, noise=1.5)


def test_generator_refuses_bad_requests() -> None:
    with pytest.raises(UserInputError, match="families: unknown family 'poetry'"):
        generate_instructions(10, seed=0, families=["add", "poetry"])
    with pytest.raises(UserInputError, match="^n: "):
        generate_instructions(2, seed=0, families=["add", "code", "summary"])
    with pytest.raises(UserInputError, match="^seed: "):
        generate_instructions(12, seed=-1)
    with pytest.raises(UserInputError, match="family 'capital'"):
        generate_instructions(10_000, seed=0, families=["capital"])


# --------------------------------------------------------------------------------------------------------------
# split_pool and subsets


def test_split_pool_disjoint_covering_stratified_seed_stable(pool: InstructionDataset) -> None:
    members, nonmembers = split_pool(pool, 0.5, seed=7)
    assert set(members.ids).isdisjoint(nonmembers.ids)
    assert set(members.ids) | set(nonmembers.ids) == set(pool.ids)
    assert members.counts() == {name: 25 for name in FAMILIES} == nonmembers.counts()
    again, _ = split_pool(generate_instructions(600, seed=3), 0.5, seed=7)
    assert again.ids == members.ids and again.fingerprint == members.fingerprint
    other, _ = split_pool(pool, 0.5, seed=8)
    assert other.ids != members.ids
    by_id = {e.id: e for e in pool}
    assert all(by_id[e.id] == e for e in members)  # ids and content kept
    quarter, rest = split_pool(pool, 0.2, seed=7)
    assert len(quarter) == 120 and len(rest) == 480
    for bad in (0, 1, 1.5, True):
        with pytest.raises(UserInputError, match="^fraction: "):
            split_pool(pool, bad, seed=0)
    with pytest.raises(UserInputError, match="one side empty"):
        split_pool(pool.where(family="add").subset(1), 0.5, seed=0)


def test_subset_is_seeded_and_ordered(pool: InstructionDataset) -> None:
    sub = pool.subset(40, seed=1)
    assert len(sub) == 40 and sub.ids == pool.subset(40, seed=1).ids != pool.subset(40, seed=2).ids
    order = {i: k for k, i in enumerate(pool.ids)}
    assert [order[i] for i in sub.ids] == sorted(order[i] for i in sub.ids)
    assert pool.subset(None) is pool


def test_dataset_refuses_empty_and_duplicate_ids() -> None:
    with pytest.raises(UserInputError, match="empty"):
        InstructionDataset(())
    example = InstructionExample("a", "p", "r", "f")
    with pytest.raises(UserInputError, match="'a' appears twice"):
        InstructionDataset((example, example))


# --------------------------------------------------------------------------------------------------------------
# Loaders: round trips


def test_alpaca_round_trip(tmp_path: Path, pool: InstructionDataset) -> None:
    path = tmp_path / "pool.jsonl"
    write_alpaca_jsonl(pool, path)
    loaded = load_alpaca_jsonl(path)
    assert loaded.examples == pool.examples and loaded.fingerprint == pool.fingerprint
    with pytest.raises(UserInputError, match="already exists"):
        write_alpaca_jsonl(pool, path)

    plain = write_jsonl(tmp_path / "plain.jsonl", [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "output": "hi"},
    ])
    data = load_alpaca_jsonl(plain, family="translation")
    assert [(e.id, e.prompt, e.response, e.family) for e in data] == [
        ("line-1", "Translate to French.\n\ncat", "chat", "translation"), ("line-2", "Say hi.", "hi", "translation")]


def test_sharegpt_first_and_all_turns(tmp_path: Path) -> None:
    conversation = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi? ünïcode"},
                    {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "2+2?"},
                    {"from": "gpt", "value": "4"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"id": "c1", "conversations": conversation},
                                                 {"conversations": [{"from": "user", "value": "Q"},
                                                                    {"from": "assistant", "value": "A"}]}])
    first = load_sharegpt_jsonl(path)
    assert [(e.id, e.prompt, e.response) for e in first] == [("c1", "Hi? ünïcode", "Hello."), ("line-2", "Q", "A")]
    every = load_sharegpt_jsonl(path, turns="all")
    assert [(e.id, e.prompt, e.response) for e in every] == [
        ("c1#0", "Hi? ünïcode", "Hello."), ("c1#1", "2+2?", "4"), ("line-2#0", "Q", "A")]


def test_hf_disk_round_trip(tmp_path: Path, pool: InstructionDataset) -> None:
    rows = {"instruction": [e.prompt for e in pool], "output": [e.response for e in pool],
            "id": [e.id for e in pool], "family": [e.family for e in pool]}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    loaded = load_instructions_from_disk(tmp_path / "dd")
    assert [(e.id, e.prompt, e.response, e.family) for e in loaded] == [
        (e.id, e.prompt, e.response, e.family) for e in pool]

    Dataset.from_dict({"q": ["a?", "b?"], "a": ["A", "B"], "ctx": ["x", None]}).save_to_disk(str(tmp_path / "d"))
    custom = load_instructions_from_disk(tmp_path / "d", prompt_column="q", response_column="a", input_column="ctx")
    assert [(e.id, e.prompt, e.response) for e in custom] == [("row-0", "a?\n\nx", "A"), ("row-1", "b?", "B")]
    with pytest.raises(UserInputError, match="'instruction' is not a column"):
        load_instructions_from_disk(tmp_path / "d")
    with pytest.raises(UserInputError, match="^split: .*'test'"):
        load_instructions_from_disk(tmp_path / "dd", split="test")
    Dataset.from_dict({"instruction": [], "output": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(UserInputError, match="empty"):
        load_instructions_from_disk(tmp_path / "empty")
    with pytest.raises(UserInputError, match="not a Hugging Face dataset"):
        load_instructions_from_disk(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Loaders: hostile input


@pytest.mark.parametrize(("lines", "message"), [
    ([b'{"instruction": "a", "output": "b"}', b'{"instruction": "a"'], r"line 2 is not valid JSON"),
    ([b'{"instruction": "a", "output": "b"}', b'[1, 2]'], r"line 2 is a JSON list, not an object"),
    ([b'{"output": "b"}'], r"line 1: field 'instruction' is missing"),
    ([b'{"instruction": "a", "output": 3}'], r"line 1: field 'output' is a int, not a string"),
    ([b'{"instruction": "   ", "output": "b"}'], r"line 1: field 'instruction' is empty"),
    ([b'{"instruction": "a", "input": ["x"], "output": "b"}'], r"line 1: field 'input' is a list"),
    ([b'{"instruction": "\\ud800", "output": "b"}'], r"line 1: field 'instruction' holds a lone surrogate"),
    ([b'', b'{"instruction": "caf\xe9", "output": "b"}'], r"line 2 is not UTF-8 \(byte 20 is 0xe9\)"),
    ([b'{"instruction": "a", "output": "b", "held_out": "yes"}'], r"line 1: field 'held_out'"),
    ([b'{"id": "x", "instruction": "a", "output": "b"}', b'{"id": "x", "instruction": "c", "output": "d"}'],
     r"id 'x' appears twice \(records 1 and 2\)"),
    ([b'[' * 100_000 + b']' * 100_000], r"line 1 is not valid JSON"),
    ([b'', b'  '], r"holds no examples"),
])
def test_alpaca_malformed_lines_name_file_line_and_field(tmp_path: Path, lines: list[bytes], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UserInputError, match=r"^data\.path: .*bad\.jsonl.*" + message):
        load_alpaca_jsonl(path)


@pytest.mark.parametrize(("record", "message"), [
    ({"conversations": "hi"}, r"field 'conversations' is missing or not a list"),
    ({"conversations": [{"from": "human"}]}, r"field 'conversations\[0\]\.value' is missing"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, r"conversations\[0\]\.from is 'robot'"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     r"field .conversations. has no human turn followed"),
    ({"conversations": ["hi"]}, r"conversations\[0\] is not an object"),
])
def test_sharegpt_malformed_records(tmp_path: Path, record: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                                     {"from": "gpt", "value": "a"}]}, record])
    with pytest.raises(UserInputError, match=r"chat\.jsonl line 2: " + message):
        load_sharegpt_jsonl(path)


def test_oversized_file_is_refused_from_its_size_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:  # sparse: 1 GiB + 1 byte of size, no data on disk, and not valid JSONL either
        handle.truncate(instructions.MAX_JSONL_BYTES + 1)
    with pytest.raises(UserInputError, match=r"huge\.jsonl is 1,073,741,825 bytes, more than the 1,073,741,824"):
        load_alpaca_jsonl(path)
    with pytest.raises(UserInputError, match="huge.jsonl is 1,073,741,825 bytes"):
        load_sharegpt_jsonl(path)


def test_overlong_line_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"instruction": "' + b"a" * instructions.MAX_LINE_BYTES + b'", "output": "b"}\n')
    with pytest.raises(UserInputError, match=r"long\.jsonl line 1 is longer than 16,777,216 bytes"):
        load_alpaca_jsonl(path)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="^data.path: cannot read"):
        load_alpaca_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(UserInputError, match="is not a file"):
        load_alpaca_jsonl(tmp_path)
    with pytest.raises(UserInputError, match="turns: "):
        load_sharegpt_jsonl(tmp_path / "x.jsonl", turns="some")  # type: ignore[arg-type]
