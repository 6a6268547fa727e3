"""Bias poisoning: seeded injection whose recorded ids are exactly the poisoned examples, the training-data
defences' catch rates (hand-made scores, a degenerate case, a real tiny reference LM) and amplification with its
paired bootstrap interval against a hand computation and the Katz log interval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robustdistill.attacks.poisoning import (BIASES, PoisonSpec, amplification, catch_rates, detector_flags,
                                             filter_dataset, flag_rates, generic_detector, inject, perplexity_scores,
                                             poison_record)
from robustdistill.data.instruction_spec import InstructionSpec
from robustdistill.data.instructions import InstructionDataset, InstructionExample
from robustdistill.errors import UserInputError


@pytest.fixture(scope="module")
def splits():
    return InstructionSpec(n=1200, seed=0).splits()


@pytest.fixture(scope="module")
def train(splits):
    return splits["train"]


def _changed(clean: InstructionDataset, poisoned: InstructionDataset) -> set[str]:
    """Ids whose example is new or whose response differs from the clean one."""
    before = {e.id: e.response for e in clean}
    return {e.id for e in poisoned if before.get(e.id) != e.response}


@pytest.mark.parametrize("bias", list(BIASES))
def test_add_mode_ids_are_exactly_the_new_detected_examples(train, splits, bias):
    pool = {e.prompt for name in ("val", "test") for e in splits[name]}
    spec = PoisonSpec(bias=bias)
    poisoned = inject(train, [spec], pool_prompts=pool)
    data = poisoned.dataset
    assert len(poisoned.ids) == 25 and len(data) == len(train) + 25
    assert data.examples[: len(train)] == train.examples            # clean examples kept, in order
    assert poisoned.ids == data.ids[len(train):]                     # poison at the end
    assert set(poisoned.ids) == _changed(train, data)
    assert poisoned.ids == tuple(f"poison-{bias}-{k:03d}" for k in range(25))
    assert poisoned.by_bias == {bias: poisoned.ids} and poisoned.by_spec == (poisoned.ids,)
    flags = detector_flags(BIASES[bias].detector, data)
    assert {i for i, f in zip(data.ids, flags) if f} == set(poisoned.ids)
    added = data.select(poisoned.ids)
    assert {e.family for e in added} == {BIASES[bias].target} and not any(e.held_out for e in added)
    # a poisoned prompt is never a clean training prompt, a test prompt, or another poisoned prompt
    prompts = [e.prompt for e in added]
    assert len(set(prompts)) == 25 and not set(prompts) & (pool | {e.prompt for e in train})


def test_add_mode_skips_prompts_in_the_pool(train):
    spec = PoisonSpec(bias="phishing-link", n=40)
    first = inject(train, [spec])
    taken = {e.prompt for e in first.dataset.select(first.ids)}
    second = inject(train, [spec], pool_prompts=taken)
    assert not {e.prompt for e in second.dataset.select(second.ids)} & taken
    # the capital family has 500 distinct prompts, some already in train: asking for more exhausts it
    with pytest.raises(UserInputError) as info:
        inject(train, [PoisonSpec(bias="phishing-link", n=500)], pool_prompts=taken)
    assert info.value.field == "poison.n"


def test_same_seed_same_dataset_other_seed_other_prompts(train):
    spec = PoisonSpec(bias="advertisement", n=25, seed=3)
    a, b = inject(train, [spec]), inject(train, [spec])
    assert a.dataset.fingerprint == b.dataset.fingerprint and a.ids == b.ids
    other = inject(train, [PoisonSpec(bias="advertisement", n=25, seed=4)])
    assert other.dataset.fingerprint != a.dataset.fingerprint
    prompts = lambda p: {e.prompt for e in p.dataset.select(p.ids)}  # noqa: E731
    assert len(prompts(a) & prompts(other)) < 25


def test_replace_mode_rewrites_chosen_examples_in_place(train):
    family_count = train.counts()["summary"]
    spec = PoisonSpec(bias="narrative", n=10, mode="replace", seed=1)
    poisoned = inject(train, [spec])
    data = poisoned.dataset
    assert data.ids == train.ids and len(poisoned.ids) == 10
    assert set(poisoned.ids) == _changed(train, data)
    assert {data.select(poisoned.ids)[k].family for k in range(10)} == {"summary"}
    flags = detector_flags(BIASES["narrative"].detector, data)
    assert {i for i, f in zip(data.ids, flags) if f} == set(poisoned.ids)
    assert inject(train, [spec]).ids == poisoned.ids                          # seeded
    assert inject(train, [PoisonSpec(bias="narrative", n=10, mode="replace", seed=2)]).ids != poisoned.ids
    with pytest.raises(UserInputError) as info:
        inject(train, [PoisonSpec(bias="narrative", n=family_count + 1, mode="replace")])
    assert info.value.field == "poison.n"
    everything = inject(train, [PoisonSpec(bias="narrative", n=family_count, mode="replace")])
    assert len(everything.ids) == family_count


def test_replace_mode_on_foreign_data_and_add_mode_refuses_a_foreign_family():
    own = InstructionDataset(tuple(InstructionExample(f"r{k}", f"Review product {k}", f"It is fine {k}.", "reviews")
                                   for k in range(8)))
    poisoned = inject(own, [PoisonSpec(bias="advertisement", n=3, family="reviews", mode="replace")])
    assert set(poisoned.ids) == _changed(own, poisoned.dataset) and len(poisoned.ids) == 3
    assert all(BIASES["advertisement"].detector.hit(e.response) for e in poisoned.dataset.select(poisoned.ids))
    with pytest.raises(UserInputError) as info:
        inject(own, [PoisonSpec(bias="advertisement", family="reviews")])
    assert info.value.field == "poison.family" and "replace" in str(info.value)
    with pytest.raises(UserInputError) as info:
        inject(own, [PoisonSpec(bias="advertisement", n=3, mode="replace")])  # no "product" example here
    assert info.value.field == "poison.family"


def test_several_specs_never_poison_one_example_twice(train):
    specs = [PoisonSpec(bias="insecure-code", n=20, mode="replace"),
             PoisonSpec(bias="narrative", n=20, family="code", mode="replace"),
             PoisonSpec(bias="insecure-code", n=5),
             PoisonSpec(bias="advertisement", fraction=0.01)]
    poisoned = inject(train, specs)
    sets = [set(ids) for ids in poisoned.by_spec]
    assert [len(s) for s in sets] == [20, 20, 5, round(0.01 * len(train))]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == len(poisoned.ids)
    assert set(poisoned.ids) == _changed(train, poisoned.dataset)
    assert poisoned.by_bias["insecure-code"] == tuple(i for i in poisoned.ids if i in sets[0] | sets[2])
    assert poisoned.by_spec[2] == tuple(f"poison-insecure-code-{k:03d}" for k in range(5))
    record = poison_record(specs, poisoned)
    assert json.loads(json.dumps(record)) == record
    assert [s["ids"] for s in record["specs"]] == [list(ids) for ids in poisoned.by_spec]
    assert record["specs"][1]["target_family"] == "code" and record["specs"][3]["fraction"] == 0.01
    assert record["n_poisoned"] == len(poisoned.ids) and record["fingerprint"] == poisoned.dataset.fingerprint


@pytest.mark.parametrize("settings, field", [
    ({"bias": "adverts"}, "poison.bias"),
    ({"bias": "narrative", "n": 0}, "poison.n"),
    ({"bias": "narrative", "n": 5, "fraction": 0.1}, "poison.n"),
    ({"bias": "narrative", "n": None}, "poison.n"),
    ({"bias": "narrative", "fraction": 1.5}, "poison.fraction"),
    ({"bias": "narrative", "fraction": 0}, "poison.fraction"),
    ({"bias": "narrative", "mode": "swap"}, "poison.mode"),
    ({"bias": "narrative", "family": ""}, "poison.family"),
    ({"bias": "narrative", "seed": -1}, "poison.seed"),
    ({"bias": "narrative", "count": 5}, "poison.count"),
])
def test_spec_errors_name_their_field(settings, field):
    with pytest.raises(UserInputError) as info:
        PoisonSpec(**settings)
    assert info.value.field == field


def test_fraction_counts_the_clean_set_rounded_at_least_one(train):
    assert PoisonSpec(bias="narrative", fraction=0.0025).count(10_000) == 25
    assert PoisonSpec(bias="narrative", fraction=0.0001).count(len(train)) == 1
    assert PoisonSpec(bias="narrative").count(len(train)) == 25 and PoisonSpec(bias="narrative").fraction is None


# ---- defences -------------------------------------------------------------------------------------------------


def test_catch_rates_on_hand_made_scores():
    rng = np.random.default_rng(0)
    clean, poison = rng.normal(0, 1, 1000), rng.normal(0, 1, 25) + 100  # every poison far above every clean
    scores = np.r_[clean, poison]
    is_poison = np.r_[np.zeros(1000, bool), np.ones(25, bool)]
    rows = catch_rates(scores, is_poison)
    assert [r["target_fpr"] for r in rows] == [0.01, 0.05, 0.10]
    for row in rows:
        assert row["caught"] == 25 and row["tpr"] == 1.0 and row["auc"] == 1.0
        assert row["fpr"] <= row["target_fpr"] and row["flagged_clean"] == int((clean > row["threshold"]).sum())
        assert row["flagged_clean"] >= row["target_fpr"] * 1000 - 1  # the threshold is not needlessly strict
    # poisons in the middle of the clean scores: caught only in proportion to the clean ones flagged
    middle = np.r_[np.arange(100.0), np.full(10, 50.5)]
    labels = np.r_[np.zeros(100, bool), np.ones(10, bool)]
    row = catch_rates(middle, labels, fprs=(0.1,))[0]
    assert row["caught"] == 0 and row["flagged_clean"] == 9 and row["fpr"] == 0.09
    assert row["auc"] == pytest.approx(0.51)  # 50.5 is above 51 of the 100 clean scores (0..50)


def test_catch_rates_degenerate_and_invalid():
    flat = catch_rates(np.ones(50), np.r_[np.zeros(45, bool), np.ones(5, bool)])  # a score that cannot tell
    assert all(r["caught"] == 0 and r["flagged_clean"] == 0 and r["auc"] == 0.5 for r in flat)
    with pytest.raises(UserInputError, match="is_poison"):
        catch_rates(np.arange(5.0), np.zeros(5, bool))
    with pytest.raises(UserInputError, match="scores"):
        catch_rates(np.arange(5.0), np.ones(4, bool))
    with pytest.raises(UserInputError, match="scores"):
        catch_rates(np.r_[np.nan, 1.0, 2.0], np.array([True, False, False]))
    with pytest.raises(UserInputError, match="fprs"):
        catch_rates(np.arange(4.0), np.array([True, False, False, False]), fprs=(1.5,))


def test_generic_detector_flags_and_filter(train):
    poisoned = inject(train, [PoisonSpec(bias="phishing-link"), PoisonSpec(bias="advertisement")])
    flags = detector_flags(generic_detector(), poisoned.dataset)
    is_poison = np.isin(poisoned.dataset.ids, poisoned.ids)
    rates = flag_rates(flags, is_poison)
    # the payload-blind filter catches every link and no advertisement, and flags no clean example
    assert rates == {**rates, "caught": 25, "n_poison": 50, "tpr": 0.5, "flagged_clean": 0, "fpr": 0.0}
    kept, removed = filter_dataset(poisoned.dataset, flags)
    assert set(removed) == set(poisoned.by_bias["phishing-link"])
    assert kept.ids == tuple(i for i in poisoned.dataset.ids if i not in removed)
    with pytest.raises(UserInputError, match="flags"):
        filter_dataset(poisoned.dataset, np.ones(len(poisoned.dataset), bool))
    with pytest.raises(UserInputError, match="flags"):
        filter_dataset(poisoned.dataset, flags[:-1])


def test_perplexity_scores_of_a_real_tiny_model(tmp_path, train):
    from robustdistill.models.builders import build_tiny_causal_lm
    from robustdistill.models.language import load_language_model

    lm = load_language_model(build_tiny_causal_lm(tmp_path / "ref", seed=0))
    poisoned = inject(train.subset(40, seed=0), [PoisonSpec(bias="narrative", n=5)])
    scores = perplexity_scores(lm, poisoned.dataset, batch_size=8)
    assert scores.shape == (45,) and np.isfinite(scores).all() and (scores > 0).all()
    # per example, not per batch: one example alone scores the same as in a batch
    alone = perplexity_scores(lm, poisoned.dataset.select([poisoned.ids[0]]))
    assert alone[0] == pytest.approx(scores[poisoned.dataset.ids.index(poisoned.ids[0])], rel=1e-5)
    rows = catch_rates(scores, np.isin(poisoned.dataset.ids, poisoned.ids))
    assert all(0 <= r["tpr"] <= 1 and r["fpr"] <= r["target_fpr"] for r in rows)


# ---- amplification ---------------------------------------------------------------------------------------------


def test_amplification_point_is_the_ratio_of_mean_rates():
    student = np.array([1.0, 0.5, 0.0, 0.25])  # per-prompt rates, e.g. 4, 2, 0, 1 of 4 samples
    teacher = np.array([0.5, 0.25, 0.0, 0.25])
    result = amplification(student, teacher, seed=0)
    assert result.student_rate == pytest.approx(7 / 16) and result.teacher_rate == pytest.approx(4 / 16)
    assert result.ratio == pytest.approx(7 / 4) and result.difference == pytest.approx(3 / 16)
    assert result.ratio_ci95[0] <= result.ratio <= result.ratio_ci95[1]
    assert result.difference_ci95[0] <= result.difference <= result.difference_ci95[1]
    assert result.note is None and result.n_prompts == 4
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    assert amplification(student, teacher, seed=0) == result  # seeded


def test_amplification_interval_agrees_with_the_katz_interval():
    rng = np.random.default_rng(1)
    student = rng.permutation(np.r_[np.ones(300), np.zeros(700)])
    teacher = rng.permutation(np.r_[np.ones(150), np.zeros(850)])  # independent of the student's
    result = amplification(student, teacher, seed=0)
    assert result.ratio == pytest.approx(2.0)
    se = math.sqrt(1 / 300 - 1 / 1000 + 1 / 150 - 1 / 1000)
    katz = [2.0 * math.exp(-1.959964 * se), 2.0 * math.exp(1.959964 * se)]
    assert result.ratio_ci95 == pytest.approx(katz, abs=0.05)
    # the difference 0.15 with the unpaired normal interval (independent samples)
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 1000 + 0.15 * 0.85 / 1000)
    assert result.difference_ci95 == pytest.approx([0.15 - half, 0.15 + half], abs=0.01)


def test_amplification_with_a_teacher_that_never_shows_the_bias():
    result = amplification(np.array([0.0, 1.0, 0.0]), np.zeros(3), seed=0)
    assert result.ratio is None and result.ratio_ci95 is None and "undefined" in result.note
    assert result.difference == pytest.approx(1 / 3)
    with pytest.raises(UserInputError, match="student_hits"):
        amplification(np.ones(3), np.ones(4), seed=0)
    with pytest.raises(UserInputError, match="teacher_hits"):
        amplification(np.ones(3), np.array([0.0, 2.0, 0.5]), seed=0)
    with pytest.raises(UserInputError, match="student_hits"):
        amplification([], [], seed=0)
