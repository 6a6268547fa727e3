"""The instruction data spec: seeded, stratified, disjoint splits of one pool, and clear errors."""

from __future__ import annotations

import pytest

from robustdistill.data.instruction_spec import InstructionSpec
from robustdistill.data.instructions import write_alpaca_jsonl
from robustdistill.data import generate_instructions
from robustdistill.errors import UserInputError


def test_splits_are_disjoint_cover_the_pool_and_repeat() -> None:
    spec = InstructionSpec(n=220, seed=3)
    splits = spec.splits()
    ids = [set(part.ids) for part in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(spec.pool().ids)
    assert {k: v.fingerprint for k, v in InstructionSpec(n=220, seed=3).splits().items()} == \
        {k: v.fingerprint for k, v in splits.items()}
    # Stratified: every family is in the training split, in proportion.
    train = splits["train"].counts()
    assert set(train) == set(spec.pool().counts())
    assert all(abs(count - 0.6 * 20) <= 1 for count in train.values())
    assert InstructionSpec(n=220, seed=3, split_seed=1).splits()["train"].ids != splits["train"].ids


def test_alpaca_file_kind_reads_the_file(tmp_path) -> None:
    source = generate_instructions(60, seed=0, families=["add", "reverse"])
    write_alpaca_jsonl(source, tmp_path / "train.jsonl")
    spec = InstructionSpec(kind="alpaca-jsonl", root=str(tmp_path / "train.jsonl"))
    assert set(spec.pool().ids) == set(source.ids)


@pytest.mark.parametrize("fields, field", [
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "data.val_fraction"),
    ({"families": ["nope"]}, "data.families"),
    ({"kind": "alpaca-jsonl"}, "data.root"),
    ({"root": "x.jsonl"}, "data.root"),
    ({"n": 0}, "data.n"),
    ({"colour": 1}, "data.colour"),
])
def test_bad_specs_name_the_field(fields, field) -> None:
    with pytest.raises(UserInputError) as info:
        InstructionSpec(**fields)
    assert info.value.field == field
