"""Membership inference against causal LMs: scores checked by hand on a real tiny model, the null calibration
(non-members against non-members), and a real fine-tuned model whose members the attacks find."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from robustdistill.attacks.privacy.lm_scores import (
    lm_membership,
    lm_scores,
    min_k_count,
    min_k_plus_score,
    min_k_score,
    response_token_stats,
)
from robustdistill.data.instruction_tasks import generate_instructions
from robustdistill.data.instructions import split_pool
from robustdistill.errors import UserInputError
from robustdistill.models.builders import build_tiny_causal_lm
from robustdistill.models.language import load_language_model
from robustdistill.models.lm_text import encode_pair, pad_batch, response_logits, special_ids

# Families whose responses a tiny model cannot derive from the prompt (numbers, pseudo-words): what it scores well
# it has memorised.
FAMILIES = ("add", "subtract", "reverse", "uppercase")
N_MEMBERS = 100
POOL = 1400  # 100 members + 1300 never trained on: two ~650 halves for the null calibration
EPOCHS = 45
ATTACKS = ("loss", "zlib", "min-k", "min-k++")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, test_seed):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm-mia") / "base", seed=test_seed)


@pytest.fixture(scope="module")
def base(base_dir):
    return load_language_model(base_dir)


@pytest.fixture(scope="module")
def pool(test_seed):
    members, rest = split_pool(generate_instructions(POOL, test_seed, FAMILIES), N_MEMBERS / POOL, seed=test_seed)
    return members, rest


def fine_tune(lm, examples, epochs, seed):
    """Cross-entropy on the response tokens, the instruction-tuning loss, until the model has overfit."""
    _, pad = special_ids(lm)
    encoded = [encode_pair(lm, e.prompt, e.response) for e in examples]
    optimizer = torch.optim.AdamW(lm.model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    lm.model.train()
    for _ in range(epochs):
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order), 20):
            batch = pad_batch([encoded[i] for i in order[start : start + 20]], pad)
            mask = batch.target_mask
            loss = torch.nn.functional.cross_entropy(response_logits(lm, batch)[mask], batch.ids[:, 1:][mask])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    lm.model.eval()
    return lm


@pytest.fixture(scope="module")
def tuned(base_dir, pool, test_seed):
    torch.manual_seed(test_seed)  # dropout during training
    return fine_tune(load_language_model(base_dir), pool[0], EPOCHS, test_seed)


def hand_token_logprobs(lm, prompt, response):
    """log p of each response token (eos included) and the full next-token log-distribution at its position, from
    one unpadded forward pass: positions picked by hand from the prompt's length."""
    encoded = encode_pair(lm, prompt, response)
    ids = list(encoded.ids)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    positions = range(encoded.response_start, len(ids))
    token = np.array([log_probs[t - 1, ids[t]].item() for t in positions])
    full = log_probs[[t - 1 for t in positions]]
    return token, full, len(encoded.response_ids)


def five_token_example(lm, examples):
    for example in examples:
        if len(encode_pair(lm, example.prompt, example.response).response_ids) == 5:
            return example.prompt, example.response
    raise AssertionError("no example with a 5-token response (4 + eos) in the pool")


def test_scores_equal_hand_computation(tuned, pool):
    members, rest = pool
    prompt, response = five_token_example(tuned, members)
    token, full, n = hand_token_logprobs(tuned, prompt, response)
    assert n == 5 and token.shape == (5,)
    probs = full.exp()
    mu = (probs * full).sum(-1).numpy()
    # The paper's uncentred variance, an independent check of the implementation's centred form.
    sigma = np.sqrt(((probs * full.square()).sum(-1) - torch.from_numpy(mu).square()).numpy())
    expected = {
        "loss": token.mean(),
        "zlib": token.mean() / len(zlib.compress(response.encode("utf-8"))),
        "min-k": np.sort(token)[:2].mean(),  # k = 0.4 of 5 tokens: the two least likely
        "min-k++": np.sort((token - mu) / sigma)[:2].mean(),
    }
    # Neighbours of other lengths put the example in a right-padded batch.
    others = [(e.prompt, e.response) for e in rest.examples[:2]] + [(members[0].prompt, members[0].response * 3)]
    tuned.model.train()  # scores must not depend on dropout, and the caller's mode comes back
    try:
        scores = lm_scores(tuned, [others[0], (prompt, response), others[1], others[2]], k=0.4, batch_size=4)
        assert tuned.model.training
    finally:
        tuned.model.eval()
    for name, value in expected.items():
        assert scores[name][1] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert len(set(np.round(scores["min-k"], 6))) == 4  # four different texts, four different scores


def test_min_k_takes_the_k_least_likely_tokens():
    assert min_k_count(5, 0.4) == 2 and min_k_count(10, 0.3) == 3 and min_k_count(3, 0.2) == 1
    assert min_k_count(7, 1.0) == 7
    assert min_k_count(9, 0.2) == 1 and min_k_count(14, 0.2) == 2  # floor(k * n), as in both papers' code
    assert min_k_score([-1.0, -5.0, -2.0, -4.0, -3.0], 0.4) == pytest.approx(-4.5)
    assert min_k_score([-1.0, -5.0], 0.2) == pytest.approx(-5.0)  # at least one token
    # Standardising by the per-position mu and sigma can reorder the tokens.
    assert min_k_plus_score([-1.0, -3.0], [-0.5, -4.0], [0.5, 2.0], 0.5) == pytest.approx(-1.0)


def test_reference_score_uses_each_models_own_tokens(tuned, tmp_path, pool, test_seed):
    reference = load_language_model(build_tiny_causal_lm(tmp_path / "ref", seed=test_seed + 1, vocab_size=320))
    examples = [(e.prompt, e.response) for e in pool[0].examples[:3]]
    own = [encode_pair(reference, *pair).ids for pair in examples]
    assert own != [encode_pair(tuned, *pair).ids for pair in examples]  # the tokenizers really differ
    scores = lm_scores(tuned, examples, attacks=("loss",), reference=reference)
    assert set(scores) == {"loss", "reference"}
    for index, pair in enumerate(examples):
        target_nll = -hand_token_logprobs(tuned, *pair)[0].mean()
        reference_nll = -hand_token_logprobs(reference, *pair)[0].mean()
        assert scores["reference"][index] == pytest.approx(reference_nll - target_nll, rel=1e-5, abs=1e-6)


def test_prompt_tokens_do_not_count(tuned, pool):
    example = pool[0][0]
    prompts = [example.prompt, "Answer now. " * 8 + example.prompt]
    stats = response_token_stats(tuned, [(prompt, example.response) for prompt in prompts])
    n_response = len(encode_pair(tuned, example.prompt, example.response).response_ids)
    assert [len(s.logprobs) for s in stats] == [n_response, n_response]
    assert len(encode_pair(tuned, prompts[1], example.response).prompt_ids) > \
        len(encode_pair(tuned, prompts[0], example.response).prompt_ids) + 8
    # The prompt conditions the response tokens: the same response scores differently under another prompt.
    assert not np.allclose(stats[0].logprobs, stats[1].logprobs)
    for s in response_token_stats(tuned, pool[0].examples[:20], batch_size=7):
        assert len(s.logprobs) == len(s.mu) == len(s.sigma) and (s.sigma > 0).all()


def test_null_calibration_nonmembers_against_nonmembers(tuned, base, pool, test_seed):
    """Two random halves of examples the model never saw: every attack must be at chance (AUC 0.5 +- 0.05)."""
    first, second = split_pool(pool[1], 0.5, seed=test_seed + 7)
    assert min(len(first), len(second)) >= 600
    metrics = lm_membership(tuned, first, second, reference=base)
    assert set(metrics) == {*ATTACKS, "reference"}
    for name, m in metrics.items():
        assert abs(m.auc - 0.5) < 0.05, (name, m.auc)


def test_fine_tuned_members_are_found(tuned, base, pool, test_seed):
    members, rest = pool
    # Stratified by family like the members: an untrained model's scores differ by family, and a family mix that
    # differed between the two sets would read as membership.
    nonmembers = split_pool(rest, N_MEMBERS / len(rest), seed=test_seed + 1)[0]
    metrics = lm_membership(tuned, members, nonmembers, reference=base)
    for name in ("loss", "reference"):
        assert metrics[name].auc > 0.7, (name, metrics[name].auc)
        assert metrics[name].auc_ci95[0] > 0.5, name
    for name in ATTACKS:
        assert metrics[name].auc > 0.6, (name, metrics[name].auc)
        assert metrics[name].n_members == N_MEMBERS == metrics[name].n_nonmembers
    # The signal is the fine-tuning: the base model, same texts, has none of it.
    before = lm_membership(base, members, nonmembers)["loss"].auc
    assert metrics["loss"].auc - before > 0.2


def test_same_inputs_same_scores_whatever_the_batch_size(tuned, pool):
    examples = pool[1].examples[:30]
    first = lm_scores(tuned, examples, batch_size=16)
    again = lm_scores(tuned, examples, batch_size=16)
    for name in ATTACKS:
        assert np.array_equal(first[name], again[name]), name
    for batch_size in (1, 7):
        other = lm_scores(tuned, examples, batch_size=batch_size)
        for name in ATTACKS:
            np.testing.assert_allclose(other[name], first[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"k": 0}, "k"), ({"k": 1.5}, "k"), ({"k": True}, "k"), ({"k": math.nan}, "k"), ({"k": "0.2"}, "k"),
    ({"attacks": "loss"}, "attacks"), ({"attacks": ()}, "attacks"), ({"attacks": ("loss", "lira")}, "attacks"),
    ({"attacks": ("reference",)}, "reference"), ({"batch_size": 0}, "batch_size"),
    ({"examples": []}, "examples"), ({"examples": "What is 2 plus 3?"}, "examples"),
    ({"examples": [("What is 2 plus 3?",)]}, "examples[0]"), ({"examples": [("q", 5)]}, "examples[0]"),
    ({"lm": "models/teacher"}, "lm"), ({"reference": object()}, "reference"),
])
def test_bad_input_names_the_field(tuned, kwargs, field):
    call = {"lm": tuned, "examples": [("What is 2 plus 3?", "5")], **kwargs}
    with pytest.raises(UserInputError) as info:
        lm_scores(**call)
    assert info.value.field == field


def test_membership_refuses_overlapping_or_empty_sets(tuned, pool):
    members = pool[0].examples[:5]
    with pytest.raises(UserInputError) as info:
        lm_membership(tuned, members, list(pool[1].examples[:5]) + [members[2]])
    assert info.value.field == "nonmembers"
    with pytest.raises(UserInputError) as info:
        lm_membership(tuned, [], pool[1].examples[:5])
    assert info.value.field == "members"
    with pytest.raises(UserInputError) as info:
        min_k_plus_score([-1.0, -2.0], [-1.0], [1.0, 1.0], 0.5)
    assert info.value.field == "mu"
