"""Membership ground truth: which points a model trained on (members) and which it did not (non-members).

Two sources, per model:

- its checkpoint's provenance (``train_members``: positions in the data's source pool, and the data spec). The
  population scored is the train split - the members plus the train points the model left out - and, when the
  model trained on the whole train split, the test split as non-members too (never val: trainers select on it);
- member and non-member data given in the suite, for checkpoints trained elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustdistill.data import DataSpec, ImageSplit, load_split, parse_spec
from robustdistill.errors import UserInputError


@dataclass(frozen=True, eq=False)
class Population:
    """The points a membership audit scores, each with a stable key such as ``train:17``."""

    x: torch.Tensor
    y: torch.Tensor
    keys: tuple[str, ...]
    classes: tuple[str, ...]
    fingerprint: str
    description: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def split(self, mask: np.ndarray) -> ImageSplit:
        """The points where ``mask`` is True as a training split (``indices``: positions in the population)."""
        index = torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long)
        digest = hashlib.sha256(f"{self.fingerprint}\n{np.packbits(mask).tobytes().hex()}".encode()).hexdigest()
        return ImageSplit(self.x[index], self.y[index], index, self.classes, "train", digest)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Whose membership (``role``), over which population, and where that knowledge came from."""

    role: str
    population: Population
    is_member: np.ndarray  # (len(population),) bool
    source: str
    spec: DataSpec | None = None  # the data the model trained on, when known from provenance

    @property
    def n_members(self) -> int:
        return int(self.is_member.sum())

    @property
    def member_keys(self) -> frozenset[str]:
        return frozenset(k for k, m in zip(self.population.keys, self.is_member) if m)


def _concat(parts: list[tuple[str, ImageSplit]], description: str) -> Population:
    keys = tuple(f"{name}:{int(i)}" for name, split in parts for i in split.indices)
    x = torch.cat([split.x for _, split in parts])
    y = torch.cat([split.y for _, split in parts])
    digest = hashlib.sha256("\n".join(f"{name}:{split.fingerprint}" for name, split in parts).encode()).hexdigest()
    return Population(x, y, keys, parts[0][1].classes, digest, description)


def from_provenance(role: str, provenance: Mapping[str, Any], where: str, fix: str) -> GroundTruth:
    """Members recorded by our trainers; raises UserInputError (naming ``where``) when there is no record."""
    members = provenance.get("train_members")
    data = provenance.get("data") if isinstance(provenance.get("data"), Mapping) else {}
    if not members or not isinstance(data.get("spec"), Mapping):
        raise UserInputError(where, f"the {role} has no recorded training members (its checkpoint was not trained by "
                             "robustdistill, or its provenance was removed)", fix)
    spec = parse_spec(data["spec"])
    train = load_split(spec, "train")
    recorded = data.get("fingerprint")
    if recorded and recorded != train.fingerprint:
        raise UserInputError(where, f"the {spec.kind} data the {role} was trained on has changed since training "
                             "(fingerprint mismatch)", "audit with the data version it was trained on")
    member_set = {int(i) for i in members}
    is_member_train = np.isin(train.indices.numpy(), np.fromiter(member_set, dtype=np.int64))
    if int(is_member_train.sum()) != len(member_set):
        raise UserInputError(where, f"{len(member_set) - int(is_member_train.sum())} of the {role}'s recorded training "
                             "members are not in the train split of its data", "check the checkpoint's provenance")
    parts = [("train", train)]
    is_member = [is_member_train]
    if is_member_train.all():  # no train point was left out: the test split supplies the non-members
        test = load_split(spec, "test")
        parts.append(("test", test))
        is_member.append(np.zeros(len(test), dtype=bool))
    names = " + ".join(f"{name} ({len(split)})" for name, split in parts)
    population = _concat(parts, f"{spec.kind} {names}")
    return GroundTruth(role, population, np.concatenate(is_member), "provenance", spec)


def from_specs(role: str, members: Mapping[str, Any], nonmembers: Mapping[str, Any], where: str) -> GroundTruth:
    """Members and non-members given as data specs with a ``split`` each (suite ``ground_truth.<role>``)."""
    parts: list[tuple[str, ImageSplit]] = []
    for name, table in (("members", members), ("nonmembers", nonmembers)):
        table = dict(table)
        split = table.pop("split", "train" if name == "members" else "test")
        try:
            loaded = load_split(parse_spec(table), split)
        except UserInputError as exc:
            raise UserInputError(f"{where}.{name}.{exc.field.removeprefix('data.')}", exc.problem, exc.fix) from None
        parts.append((name, loaded))
    (_, m), (_, n) = parts
    member_pool = pool_of(members)
    if member_pool == pool_of(nonmembers):  # the same images, however each side was split
        overlap = np.intersect1d(m.indices.numpy(), n.indices.numpy())
        if overlap.size:
            raise UserInputError(f"{where}.nonmembers", f"{overlap.size} points are both members and non-members",
                                 "use disjoint splits (e.g. members from train, non-members from test)")
    if m.classes != n.classes or m.x.shape[1:] != n.x.shape[1:]:
        raise UserInputError(f"{where}.nonmembers", "members and non-members are different kinds of data "
                             f"({len(m.classes)} vs {len(n.classes)} classes, inputs {tuple(m.x.shape[1:])} vs "
                             f"{tuple(n.x.shape[1:])})", "give non-members from the same distribution as the members")
    population = _concat(parts, f"members {len(m)} + non-members {len(n)}")
    is_member = np.concatenate([np.ones(len(m), dtype=bool), np.zeros(len(n), dtype=bool)])
    return GroundTruth(role, population, is_member, "suite")


def pool_of(table: Mapping[str, Any]) -> str:
    """Which source images a spec + split draws from: split fractions and seeds only choose positions within it
    (CIFAR-10's test split is its own batch, a separate pool)."""
    spec = parse_spec({k: v for k, v in table.items() if k != "split"})
    split = table.get("split", "train")
    source = spec.model_copy(update={"split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2})
    batch = "test-batch" if spec.kind == "cifar10" and split == "test" else "pool"
    return f"{source.cache_key()}|{batch}"


def relation(student: GroundTruth | None, teacher: GroundTruth) -> str:
    """How the student's training points relate to the teacher's population: ``same`` (it trained on the
    teacher's members), ``rest`` (on exactly the population points the teacher left out) or ``fixed``."""
    if student is None or student.spec is None or teacher.spec is None or student.spec.identity() != teacher.spec.identity():
        return "fixed"
    population = frozenset(teacher.population.keys)
    mine = student.member_keys
    if mine == teacher.member_keys:
        return "same"
    if mine == population - teacher.member_keys:
        return "rest"
    return "fixed"
