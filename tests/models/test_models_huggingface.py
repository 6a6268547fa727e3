"""Hugging Face and diffusers directories load as they are, offline, and round-trip exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustdistill.errors import UserInputError
from robustdistill.models import (
    DiffusionModel,
    HFImageClassifier,
    LanguageModel,
    build_tiny_causal_lm,
    build_tiny_class_unet,
    build_tiny_text_unet,
    checkpoint_sha256,
    load_model,
)

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=3,
                       id2label={0: "cat", 1: "dog", 2: "frog"}, label2id={"cat": 0, "dog": 1, "frog": 2})
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=MEAN, image_std=STD).save_pretrained(path)
    return path


def test_hf_image_classifier_matches_the_processor_pipeline(vit_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = load_model(vit_dir)
    assert isinstance(model, HFImageClassifier) and not model.training
    assert model.classes == ["cat", "dog", "frog"] and model.num_classes == 3
    assert model.input_shape == (3, 16, 16) and model.mean == tuple(MEAN)

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    processor = AutoImageProcessor.from_pretrained(vit_dir, local_files_only=True)
    # do_resize=False: without torchvision the PIL backend resamples even at the same size, blurring the check.
    pixel_values = processor(images=list(x), do_rescale=False, do_resize=False, return_tensors="pt")["pixel_values"]
    reference = AutoModelForImageClassification.from_pretrained(vit_dir, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(pixel_values=pixel_values).logits, rtol=1e-5, atol=1e-5)


def test_hf_image_classifier_resizes_other_sizes(vit_dir: Path) -> None:
    model = load_model(vit_dir)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    resized = F.interpolate(x.detach(), size=(16, 16), mode="bilinear", align_corners=False)
    manual = (resized - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    logits = model(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, model.model(pixel_values=manual).logits)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # attacks differentiate through resize + normalise


# --------------------------------------------------------------------------------------------------------------
# Causal language models.


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp(f"lm-{request.param}") / "lm", arch=request.param, seed=0)


def test_causal_lm_loads_with_tokenizer_and_chat_template(lm_dir: Path) -> None:
    lm = load_model(lm_dir)
    assert isinstance(lm, LanguageModel) and not lm.model.training
    tokenizer = lm.tokenizer
    assert 300 <= len(tokenizer) <= 512
    assert None not in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    text = "Sort the numbers: 9 4 7 1 — naïve café 🙂"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: every string round-trips
    prompt = lm.format_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}])
    assert prompt.startswith(tokenizer.bos_token)
    assert "<|user|>\n2+3?" + tokenizer.eos_token in prompt and prompt.endswith("<|assistant|>\n")


def test_causal_lm_round_trip_gives_the_same_logits(lm_dir: Path, tmp_path: Path) -> None:
    lm = load_model(lm_dir)
    ids = lm.tokenizer("Question: what is two plus three?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(lm.tokenizer))
    lm.model.save_pretrained(tmp_path / "copy")
    lm.tokenizer.save_pretrained(tmp_path / "copy")
    again = load_model(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, logits)
    assert again.chat_template == lm.chat_template


def test_causal_lm_builder_is_deterministic(tmp_path: Path) -> None:
    first = build_tiny_causal_lm(tmp_path / "a", seed=3)
    second = build_tiny_causal_lm(tmp_path / "b", seed=3)
    other = build_tiny_causal_lm(tmp_path / "c", seed=4)
    assert checkpoint_sha256(first) == checkpoint_sha256(second)
    assert checkpoint_sha256(first / "model.safetensors") != checkpoint_sha256(other / "model.safetensors")


# --------------------------------------------------------------------------------------------------------------
# Diffusion models.


@pytest.fixture(scope="module")
def class_unet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_class_unet(tmp_path_factory.mktemp("cu") / "unet", num_classes=10, sample_size=8, seed=0)


@pytest.fixture(scope="module")
def text_unet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_text_unet(tmp_path_factory.mktemp("tu") / "unet", sample_size=8, seed=0)


def _class_unet_output(model: DiffusionModel) -> torch.Tensor:
    sample = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.unet(sample, torch.tensor([3, 50]), class_labels=torch.tensor([1, 7])).sample


def test_class_conditional_diffusion_round_trip(class_unet_dir: Path, tmp_path: Path) -> None:
    model = load_model(class_unet_dir)
    assert isinstance(model, DiffusionModel) and not model.unet.training
    assert model.conditioning == "class" and model.num_class_embeds == 10 and model.text_encoder is None
    assert model.sample_shape == (1, 8, 8) and model.scheduler.config.num_train_timesteps == 100
    output = _class_unet_output(model)
    assert output.shape == (2, 1, 8, 8)
    # Labels matter: a class-conditional UNet that ignores its labels would be useless for unlearning audits.
    sample = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        a = model.unet(sample, torch.tensor([10]), class_labels=torch.tensor([0])).sample
        b = model.unet(sample, torch.tensor([10]), class_labels=torch.tensor([9])).sample
    assert not torch.equal(a, b)

    model.unet.save_pretrained(tmp_path / "bare_unet")
    bare = load_model(tmp_path / "bare_unet")  # a bare UNet folder, scheduler defaulted
    assert bare.conditioning == "class"
    assert torch.equal(_class_unet_output(bare), output)
    assert torch.equal(_class_unet_output(load_model(class_unet_dir / "unet")), output)  # scheduler found beside


def test_text_conditional_diffusion_round_trip(text_unet_dir: Path, tmp_path: Path) -> None:
    model = load_model(text_unet_dir)
    assert isinstance(model, DiffusionModel) and model.conditioning == "text"
    hidden = model.encode_text(["a photo of a cat", "a drawing of the digit seven"])
    assert hidden.shape == (2, model.tokenizer.model_max_length, 32)
    sample = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model.unet(sample, torch.tensor([5, 60]), encoder_hidden_states=hidden).sample
    assert output.shape == (2, 1, 8, 8)

    again = load_model(text_unet_dir)
    with torch.no_grad():
        assert torch.equal(again.encode_text(["a photo of a cat", "a drawing of the digit seven"]), hidden)
        assert torch.equal(again.unet(sample, torch.tensor([5, 60]), encoder_hidden_states=hidden).sample, output)


def test_diffusion_builders_are_deterministic(class_unet_dir: Path, text_unet_dir: Path, tmp_path: Path) -> None:
    assert checkpoint_sha256(build_tiny_class_unet(tmp_path / "c", seed=0)) == checkpoint_sha256(class_unet_dir)
    assert checkpoint_sha256(build_tiny_text_unet(tmp_path / "t", seed=0)) == checkpoint_sha256(text_unet_dir)
    other = build_tiny_class_unet(tmp_path / "c2", seed=1)
    assert checkpoint_sha256(other / "unet") != checkpoint_sha256(class_unet_dir / "unet")


def test_text_unet_without_text_encoder_is_explained(text_unet_dir: Path) -> None:
    with pytest.raises(UserInputError, match="text encoder"):
        load_model(text_unet_dir / "unet")


def test_unknown_hf_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UserInputError, match="BertForMaskedLM"):
        load_model(tmp_path)
