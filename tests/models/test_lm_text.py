"""Prompt/response encoding through the chat template, padding masks and greedy generation on real tiny LMs."""

from __future__ import annotations

import pytest
import torch

from robustdistill.errors import UserInputError
from robustdistill.models.builders import build_tiny_causal_lm
from robustdistill.models.language import load_language_model
from robustdistill.models.lm_text import encode_pair, encode_prompt, generate, pad_batch, render_prompt, special_ids


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tmp_path_factory):
    return load_language_model(build_tiny_causal_lm(tmp_path_factory.mktemp(request.param) / "m", arch=request.param))


def test_pair_is_rendered_prompt_then_response_then_eos(lm) -> None:
    pair = encode_pair(lm, "What is 2 plus 3?", "5 apples")
    eos, _ = special_ids(lm)
    assert list(pair.prompt_ids) == encode_prompt(lm, "What is 2 plus 3?")
    assert lm.tokenizer.decode(pair.prompt_ids) == render_prompt(lm, "What is 2 plus 3?")
    assert pair.response_ids[-1] == eos
    assert lm.tokenizer.decode(pair.response_ids, skip_special_tokens=True) == "5 apples"
    # The rendered prompt ends with the assistant header the model continues from.
    assert render_prompt(lm, "hi").endswith("<|assistant|>\n")


def test_long_response_is_cut_and_long_prompt_refused(lm) -> None:
    pair = encode_pair(lm, "hi", "word " * 400)
    assert len(pair.ids) == 256 and pair.response_start < 256
    with pytest.raises(UserInputError, match="prompt"):
        encode_pair(lm, "word " * 400, "ok")


def test_pad_batch_masks_only_response_tokens(lm) -> None:
    a, b = encode_pair(lm, "hi", "hello there"), encode_pair(lm, "What is the capital of France?", "Paris")
    _, pad = special_ids(lm)
    batch = pad_batch([a, b], pad)
    assert batch.ids.shape == (2, max(len(a.ids), len(b.ids)))
    for row, pair in enumerate((a, b)):
        assert batch.attention_mask[row].sum() == len(pair.ids)
        assert batch.response_mask[row].sum() == len(pair.response_ids)
        assert batch.ids[row][batch.response_mask[row]].tolist() == list(pair.response_ids)
        assert not batch.response_mask[row][: pair.response_start].any()
    assert batch.target_mask.shape == (2, batch.ids.shape[1] - 1)


def test_generate_is_greedy_batch_independent_and_checked(lm) -> None:
    prompts = ["What is 2 plus 3?", "Reverse the word: cat.", "hi"]
    together = generate(lm, prompts, max_new_tokens=6, batch_size=3)
    alone = [generate(lm, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone  # left padding does not change a greedy answer
    # The first generated token is the argmax of the model's next-token logits on the rendered prompt.
    ids = torch.tensor([encode_prompt(lm, prompts[0])])
    first = int(lm.model(input_ids=ids).logits[0, -1].argmax())
    full = lm.model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, pad_token_id=special_ids(lm)[1])
    assert int(full[0, -1]) == first
    with pytest.raises(UserInputError, match="max_new_tokens"):
        generate(lm, ["hi"], max_new_tokens=0)
    with pytest.raises(UserInputError, match="max_new_tokens"):
        generate(lm, ["hi"], max_new_tokens=300)


def test_sampled_generation_is_seeded_and_leaves_the_global_stream_alone(lm) -> None:
    prompts = ["Add 2 and 3.", "Reverse the word 'kato'.", "What is the capital of Peru?"] * 2
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = generate(lm, prompts, max_new_tokens=6, temperature=1.0, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # sampling draws from its own stream
    assert generate(lm, prompts, max_new_tokens=6, temperature=1.0, seed=5) == first
    # A random-weight model sampled at temperature 1 almost never repeats itself across seeds and prompts.
    assert generate(lm, prompts, max_new_tokens=6, temperature=1.0, seed=6) != first
    assert generate(lm, prompts, max_new_tokens=6, temperature=0.0, seed=6) == generate(lm, prompts, 6)
    with pytest.raises(UserInputError, match="temperature"):
        generate(lm, prompts, max_new_tokens=6, temperature=-1.0)
