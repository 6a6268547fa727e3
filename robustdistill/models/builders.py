"""Tiny models built offline from configs and saved as real model directories.

Demos and tests need language and diffusion models without downloading anything, so these build tiny ones:
a byte-level BPE tokenizer trained on a small built-in corpus, and models initialised from a seed. The same
seed gives the same weights on the same machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch

from robustdistill import ownership
from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import atomic_directory

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Role-tagged turns; each turn ends with the eos token so a trained model learns where its answer stops.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Enough text for a few hundred merges covering instructions, digits, colours and image-class prompts.
CORPUS = (
    "You are a helpful assistant. Answer the question briefly and correctly.",
    "Question: what is two plus three? Answer: five.",
    "Question: what is seven minus four? Answer: three.",
    "Reverse the word: cat. Answer: tac.",
    "Repeat the sequence: red green blue. Answer: red green blue.",
    "Sort the numbers: 9 4 7 1. Answer: 1 4 7 9.",
    "Is the number 12 even or odd? Answer: even.",
    "Translate to upper case: hello world. Answer: HELLO WORLD.",
    "The quick brown fox jumps over the lazy dog.",
    "zero one two three four five six seven eight nine ten",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000",
    "a photo of an airplane, an automobile, a bird, a cat, a deer, a dog, a frog, a horse, a ship, a truck",
    "a drawing of the digit zero, the digit one, the digit two, the digit three, the digit four",
    "a sketch of the digit five, the digit six, the digit seven, the digit eight, the digit nine",
    "red orange yellow green blue indigo violet black white grey",
    "The user asks a question and the assistant gives a short, safe answer.",
    "I cannot help with that request, but here is a safer alternative.",
    "Sure, here is the answer you asked for.",
    "doctor nurse engineer teacher scientist pilot lawyer chef artist writer",
    "he she they his her their him them man woman person people",
    "Please summarise the following text in one sentence.",
    "Classify the sentiment of this review as positive or negative: I loved it.",
    "def add(a, b):\n    return a + b\n",
    'print("hello") # comment; {"key": [1, 2, 3]} <tag> (x) [y] ~!@#$%^&*_-+=|\\:?/',
)


def _train_bpe(vocab_size: int, corpus: tuple[str, ...] = CORPUS) -> Any:
    """A byte-level BPE (GPT-2 style): every byte string is encodable, so no unknown token is needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return tokenizer


def _fast_tokenizer(tokenizer: Any, model_max_length: int, chat_template: str | None) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _may_replace_built(path: Path) -> bool:
    return path.is_dir() and (
        not any(path.iterdir()) or (path / "config.json").is_file() or (path / "model_index.json").is_file()
    )


def _only_built_files(target: Path, built: Path) -> None:
    """Replace ``target`` only when every file in it is one this builder has just written in ``built``: a folder
    that merely has a config.json (a user's own model, notes beside it) is refused, not replaced."""
    if target.is_dir():
        extra = sorted(set(ownership.files_under(target)) - set(ownership.files_under(built)))
        if extra:
            raise UserInputError(str(target), f"holds files robustdistill does not write there ({', '.join(extra[:4])})",
                                 "choose another output directory; robustdistill replaces only what it wrote")


def build_tiny_causal_lm(out_dir: str | os.PathLike[str], arch: Literal["gpt2", "llama"] = "gpt2", seed: int = 0,
                         vocab_size: int = 384, width: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """Save a tiny causal LM (by default 2 layers, width 32) with a byte-level BPE tokenizer and a chat template.

    Every model built here with the same ``vocab_size`` has the same tokenizer (the BPE is trained on a fixed corpus),
    so a teacher and a smaller student built here can be distilled at the logit level."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch not in ("gpt2", "llama"):
        raise UserInputError("arch", f"unknown tiny LM architecture {arch!r}", "choose 'gpt2' or 'llama'")
    for name, value, top in (("width", width, 4096), ("layers", layers, 64), ("heads", heads, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise UserInputError(name, f"must be an integer in [1, {top}], got {value!r}", f"e.g. {name} = 2")
    if width % heads:
        raise UserInputError("heads", f"{heads} heads do not divide width {width}", "use a divisor of the width")
    tokenizer = _fast_tokenizer(_train_bpe(vocab_size), model_max_length=256, chat_template=CHAT_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("bos", BOS_TOKEN), ("eos", EOS_TOKEN), ("pad", PAD_TOKEN))}
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=width, n_layer=layers, n_head=heads,
                            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=256,
                             bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                             tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.eval()
    target = Path(out_dir)
    with atomic_directory(target, may_replace=_may_replace_built) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _only_built_files(target, tmp)
    logger.info("built tiny %s causal LM (%d parameters) at %s", arch, model.num_parameters(), target)
    return target


def _tiny_ddpm_scheduler() -> Any:
    from diffusers import DDPMScheduler

    # 100 steps instead of the usual 1000: sampling a tiny model on a CPU should take seconds.
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def build_tiny_class_unet(out_dir: str | os.PathLike[str], num_classes: int = 10, sample_size: int = 8,
                          in_channels: int = 1, seed: int = 0) -> Path:
    """Save a tiny class-conditional DDPM (UNet2DModel with class embeddings + DDPMScheduler)."""
    import diffusers
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=num_classes,
    )
    index = {
        # Not DDPMPipeline: that pipeline cannot pass class labels. robustdistill reads the components itself.
        "_class_name": "RobustDistillClassConditionalDDPM",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    return _save_diffusion(out_dir, index, unet=unet)


def build_tiny_text_unet(out_dir: str | os.PathLike[str], sample_size: int = 8, in_channels: int = 1,
                         seed: int = 0) -> Path:
    """Save a tiny text-conditional DDPM: UNet2DConditionModel + tiny CLIP text encoder + BPE tokenizer."""
    import diffusers
    from diffusers import UNet2DConditionModel
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPTextConfig, CLIPTextModel

    bpe = _train_bpe(384)
    bos, eos = bpe.token_to_id(BOS_TOKEN), bpe.token_to_id(EOS_TOKEN)
    # CLIP wraps every prompt in start/end tokens and pools the hidden state at the first end token.
    bpe.post_processor = TemplateProcessing(single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
                                            special_tokens=[(BOS_TOKEN, bos), (EOS_TOKEN, eos)])
    tokenizer = _fast_tokenizer(bpe, model_max_length=16, chat_template=None)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8,
    )
    index = {
        "_class_name": "RobustDistillTextConditionalDDPM",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    return _save_diffusion(out_dir, index, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)


def _save_diffusion(out_dir: str | os.PathLike[str], index: dict[str, Any], *, unet: Any, text_encoder: Any = None,
                    tokenizer: Any = None) -> Path:
    import json

    target = Path(out_dir)
    with atomic_directory(target, may_replace=_may_replace_built) as tmp:
        unet.save_pretrained(str(tmp / "unet"))
        _tiny_ddpm_scheduler().save_pretrained(str(tmp / "scheduler"))
        if text_encoder is not None:
            text_encoder.save_pretrained(str(tmp / "text_encoder"))
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        _only_built_files(target, tmp)
    logger.info("built tiny %s at %s", index["_class_name"], target)
    return target
