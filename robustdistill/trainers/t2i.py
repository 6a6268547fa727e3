"""A small text-to-image diffusion model (``t2i``): the built-in 8x8 digits, captioned from their labels.

    robustdistill train t2i --config defenses/digits-t2i.toml --out checkpoints/digits-t2i

The DDPM objective of :mod:`robustdistill.trainers.ddpm` (Ho et al. 2020: E ||eps - eps_theta(x_t, t, c)||^2, t
uniform over a 1000-step linear-beta schedule, an EMA of the weights saved), conditioned on a caption instead of a
class label: every training image gets one of a fixed list of caption templates for its digit (:data:`CAPTIONS`:
"a handwritten digit three", "the number 3", "a picture of a three", ...), chosen per image and per epoch from the
run's seed. With probability ``cond_drop`` the caption is the empty prompt "", which then means "no caption", so the
model can be sampled with classifier-free guidance (Ho & Salimans 2022) against the empty prompt.

The images are denoised in pixel space (scaled to [-1, 1]) by a diffusers UNet2DConditionModel whose cross-attention
blocks attend to a text encoder's hidden states, as in Stable Diffusion, but sized for 8x8 images and a CPU: by
default cross-attention at the 4x4 level and in the middle block (at 8x8 a step took up to 1.9 times as long, and
the samples were no better), and the attention-pooled text added to the timestep embedding (``pooled_text``,
diffusers' addition_embed_type "text"; without it the samples followed their captions 41% of the time instead of
72% after the same 10 epochs, measured).

The text encoder is a tiny transformers CLIPTextModel trained jointly with the UNet. It is not a pretrained CLIP:
none can be used, since nothing may be downloaded (robustdistill works offline), and one would be far larger than
the whole model. In its place a short text warm-up (:func:`text_warmup`, ``text_warmup_steps``, about a second)
teaches the randomly initialised encoder to tell the captions' digits apart before the joint training; without it
the UNet learns to ignore the encoder's nearly caption-independent states (measured: samples at chance after 15
epochs, 30% after 25). The tokenizer is
a byte-level BPE trained on the captions themselves (the helpers of :mod:`robustdistill.models.builders`), so any
prompt can be tokenized, but only the caption words are single tokens, prompts outside the templates are out of
distribution, and prompts are cut at 16 tokens.

The output is a diffusers-style directory - model_index.json, unet/, scheduler/, text_encoder/, tokenizer/ -
plus robustdistill.json; :func:`robustdistill.models.diffusion.load_diffusion_model` reads it as a model with
``conditioning == "text"``, and :func:`robustdistill.models.diffusion_sampling.generate_from_prompts` samples it.
``train_fraction`` and ``train_members`` are as in the ddpm trainer (a smaller set is memorised more).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import torch
from pydantic.dataclasses import dataclass

from robustdistill.data import ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import DiffusionModel
from robustdistill.models.diffusion_sampling import denoising_loss, to_model_space
from robustdistill.progress import WorkProgress
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.config import STRICT
from robustdistill.trainers.ddpm import DDPMConfig
from robustdistill.trainers.diffusion_base import STATE_FILE, DiffusionTrainer, optimiser_step, training_images
from robustdistill.utils import derived_seed, seed_everything

log = logging.getLogger(__name__)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The caption templates, in a fixed order (provenance records them): {word} "three", {a_word} "a three" / "an eight",
# {digit} "3".
CAPTIONS = (
    "a handwritten digit {word}",
    "the number {digit}",
    "a picture of {a_word}",
    "a drawing of the digit {word}",
    "a photo of the digit {digit}",
)
NUM_CLASSES = len(WORDS)
MAX_TOKENS = 16  # the tokenizer's model_max_length: the longest caption is 8 tokens with its start and end tokens
VOCAB_SIZE = 384  # at most: the BPE runs out of merges on the captions first (256 bytes, 3 special tokens, merges)


def caption(label: int, template: int = 0) -> str:
    """The caption of digit ``label`` (0-9) by template ``template`` (an index into :data:`CAPTIONS`)."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
        raise UserInputError("label", f"{label!r} is not a digit 0-9", "caption digits 0 to 9")
    if isinstance(template, bool) or not isinstance(template, int) or not 0 <= template < len(CAPTIONS):
        raise UserInputError("template", f"{template!r} is not a caption template 0-{len(CAPTIONS) - 1}",
                             f"choose one of the {len(CAPTIONS)} templates of CAPTIONS")
    word = WORDS[label]
    article = "an" if word == "eight" else "a"
    return CAPTIONS[template].format(word=word, digit=str(label), a_word=f"{article} {word}")


def prompt_table() -> list[str]:
    """Every prompt the model is trained on: the empty prompt first, then caption(d, k) at 1 + d * K + k."""
    return [""] + [caption(d, k) for d in range(NUM_CLASSES) for k in range(len(CAPTIONS))]


@dataclass(config=STRICT)
class T2IConfig(DDPMConfig):
    """The text-to-image DDPM's settings: the ddpm trainer's (the paper's schedule and loss; cond_drop here replaces a
    caption by "", the unconditional prompt) plus the text side; a UNet and text encoder sized for 8x8 digits on one
    CPU thread."""

    epochs: int = pydantic.Field(15, ge=1)
    # Which UNet levels (one flag per width) have cross-attention to the text; the middle block always has.
    cross_attention: tuple[bool, ...] = (False, True)
    # The text, attention-pooled, also added to the timestep embedding of every residual block (diffusers'
    # addition_embed_type "text", as in unCLIP/Kandinsky): a global caption signal besides cross-attention.
    pooled_text: bool = True
    text_width: int = pydantic.Field(32, ge=8, le=1024)  # the text encoder's hidden size (= cross_attention_dim)
    text_layers: int = pydantic.Field(2, ge=1, le=12)
    text_heads: int = pydantic.Field(2, ge=1, le=16)
    # Steps of the text warm-up before the joint training (see text_warmup); 0: the encoder starts from random.
    text_warmup_steps: int = pydantic.Field(200, ge=0, le=100_000)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.cross_attention) != len(self.channels):
            raise UserInputError("cross_attention", f"{len(self.cross_attention)} flags for {len(self.channels)} UNet "
                                 "levels", "give one true/false per entry of channels, e.g. [true, false]")
        if self.text_width % self.text_heads or self.text_width % 8:
            raise UserInputError("text_width", f"{self.text_width} is not a multiple of 8 divisible by text_heads "
                                 f"{self.text_heads}", "use e.g. text_width = 32 with text_heads = 2")


def build_tokenizer() -> Any:
    """A byte-level BPE trained on the captions, wrapped CLIP-style in start and end tokens (PreTrainedTokenizerFast):
    every caption word is one token, and any other text is still encodable (byte by byte at worst)."""
    from tokenizers.processors import TemplateProcessing

    from robustdistill.models.builders import BOS_TOKEN, EOS_TOKEN, _fast_tokenizer, _train_bpe

    bpe = _train_bpe(VOCAB_SIZE, corpus=tuple(prompt_table()[1:]))
    bos, eos = bpe.token_to_id(BOS_TOKEN), bpe.token_to_id(EOS_TOKEN)
    # CLIP wraps every prompt in start/end tokens (and pools at the first end token).
    bpe.post_processor = TemplateProcessing(single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
                                            special_tokens=[(BOS_TOKEN, bos), (EOS_TOKEN, eos)])
    return _fast_tokenizer(bpe, model_max_length=MAX_TOKENS, chat_template=None)


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Token ids as DiffusionModel.encode_text makes them (padded to model_max_length, no attention mask)."""
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt")["input_ids"]


def build_text_encoder(config: T2IConfig, tokenizer: Any) -> Any:
    """A CLIPTextModel from a random start, sized by the config, with the tokenizer's vocabulary and 16 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from robustdistill.models.builders import BOS_TOKEN, EOS_TOKEN

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=2 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=config.text_width,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN), pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(config: T2IConfig, shape: tuple[int, int, int]) -> Any:
    """A UNet2DConditionModel for images of ``shape`` attending to text states of width ``text_width``."""
    from diffusers import UNet2DConditionModel

    channels, height, width = shape
    depth = len(config.channels)
    if height % 2 ** (depth - 1) or width % 2 ** (depth - 1):
        raise UserInputError("channels", f"{depth} UNet levels halve {height}x{width} images {depth - 1} times",
                             "use fewer levels for such small images")
    down = tuple("CrossAttnDownBlock2D" if cross else "DownBlock2D" for cross in config.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if cross else "UpBlock2D" for cross in reversed(config.cross_attention))
    return UNet2DConditionModel(
        sample_size=(height, width), in_channels=channels, out_channels=channels,
        layers_per_block=config.layers_per_block, block_out_channels=tuple(config.channels),
        down_block_types=down, up_block_types=up, norm_num_groups=8, cross_attention_dim=config.text_width,
        attention_head_dim=8, addition_embed_type="text" if config.pooled_text else None,
        addition_embed_type_num_heads=config.text_heads,
    )


def build_scheduler(config: T2IConfig) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.timesteps, beta_schedule=config.beta_schedule,
                         beta_start=1e-4, beta_end=0.02, prediction_type="epsilon", clip_sample=True)


def text_warmup(text_encoder: Any, prompt_ids: torch.Tensor, steps: int, lr: float) -> dict[str, Any]:
    """Teach the text encoder what the captions mean before the UNet reads it: a linear probe on its mean hidden
    state is trained with it (Adam, full batch of the prompt table) to name the digit of every caption, and "none" of
    the empty prompt. This stands in for the pretraining a real text-to-image model's CLIP has; the probe is then
    discarded. From a random start the encoder's states hardly differ between captions (the digit is one token of
    16), and the UNet learns to ignore them: measured on the digits, the captions had no effect on the samples after
    15 epochs without the warm-up, and were followed ~70% of the time after 10 epochs with it."""
    if steps == 0:
        return {"steps": 0}
    head = torch.nn.Linear(text_encoder.config.hidden_size, NUM_CLASSES + 1).to(prompt_ids.device)
    target = torch.tensor([NUM_CLASSES] + [d for d in range(NUM_CLASSES) for _ in CAPTIONS], device=prompt_ids.device)
    optimizer = torch.optim.Adam([*text_encoder.parameters(), *head.parameters()], lr=lr)
    text_encoder.train()
    for _ in range(steps):
        logits = head(text_encoder(prompt_ids).last_hidden_state.mean(dim=1))
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"steps": steps, "lr": lr, "final_loss": round(float(loss.detach()), 6),
            "accuracy": round(float((logits.argmax(dim=1) == target).float().mean()), 4)}


@TRAINERS.register("t2i")
class T2ITrainer(DiffusionTrainer):
    """A text-conditional DDPM on the digits, captioned from their labels."""

    config_class: ClassVar[type[T2IConfig]] = T2IConfig
    method: ClassVar[str] = "t2i"
    output_format: ClassVar[str] = "robustdistill-t2i"
    index_class: ClassVar[str] = "RobustDistillTextConditionalDDPM"
    config: T2IConfig

    def prepare(self) -> tuple[ImageSplit, ImageSplit]:
        """(the images trained on, the whole train split)."""
        cfg = self.config
        train, full = training_images(cfg)
        if full.num_classes != NUM_CLASSES:
            raise UserInputError("data", f"{cfg.data.kind} has {full.num_classes} classes; the captions name the "
                                 f"{NUM_CLASSES} digits 0-9", "train t2i on a digits dataset (kind = 'digits')")
        return train, full

    def run(self, out: Path, work: Path, resume: bool, prepared: tuple[ImageSplit, ImageSplit]) -> Path:
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        cfg = self.config
        train, full = prepared
        seed_everything(cfg.seed)
        tokenizer = build_tokenizer()
        text_encoder = build_text_encoder(cfg, tokenizer).to(self.device)
        unet = build_unet(cfg, train.input_shape).to(self.device)
        model = DiffusionModel(unet=unet, scheduler=build_scheduler(cfg), text_encoder=text_encoder,
                               conditioning="text")
        prompt_ids = tokenize(tokenizer, prompt_table()).to(self.device)
        resuming = resume and (work / STATE_FILE).exists()
        warmup = None if resuming else text_warmup(text_encoder, prompt_ids, cfg.text_warmup_steps, cfg.lr)
        parameters = [*unet.parameters(), *text_encoder.parameters()]
        batches = math.ceil(len(train) / cfg.batch_size)
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0)
        schedule = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, batches * cfg.epochs),
                                                   batches * cfg.epochs)
        ema = EMAModel(parameters, decay=cfg.ema) if cfg.ema is not None else None
        state: dict[str, Any] = {"epoch": 0, "history": [], "seconds": 0.0, "text_warmup": warmup}
        if resuming:
            state = self.restore(work / STATE_FILE, {"unet": unet, "text_encoder": text_encoder, "optimizer": optimizer,
                                                     "schedule": schedule}, ema)
            log.info("resuming t2i from %s after epoch %d", work, state["epoch"])
        x_all = to_model_space(train.x)
        with WorkProgress("train t2i", total=cfg.epochs * batches, units=cfg.epochs, done=state["epoch"] * batches,
                          done_units=state["epoch"], heartbeat_s=self.heartbeat_s, unit_name="epochs") as progress:
            for epoch in range(state["epoch"], cfg.epochs):
                started = time.perf_counter()
                draw = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
                with progress.unit(f"epoch {epoch + 1}/{cfg.epochs}", 0.0):
                    total = self._epoch(model, x_all, train.y, prompt_ids, optimizer, schedule, ema, draw, progress,
                                        epoch)
                state["seconds"] += time.perf_counter() - started
                state["history"].append({"epoch": epoch + 1, "train_loss": total / batches,
                                         "lr": optimizer.param_groups[0]["lr"]})
                state["epoch"] = epoch + 1
                self.save_state(work / STATE_FILE, {**state, "unet": unet.state_dict(),
                                                    "text_encoder": text_encoder.state_dict(),
                                                    "optimizer": optimizer.state_dict(),
                                                    "schedule": schedule.state_dict(),
                                                    "ema": ema.state_dict() if ema is not None else None})
        if ema is not None:
            ema.copy_to(parameters)
        unet.eval()
        text_encoder.eval()
        return self.save(out, unet.cpu(), model.scheduler, self.provenance(train, full, state),
                         text_encoder=text_encoder.cpu(), tokenizer=tokenizer)

    def _epoch(self, model: DiffusionModel, x_all: torch.Tensor, y_all: torch.Tensor, prompt_ids: torch.Tensor,
               optimizer: torch.optim.Optimizer, schedule: Any, ema: Any, draw: torch.Generator,
               progress: WorkProgress, epoch: int) -> float:
        """One pass over the training images in a seeded order; the noise, timesteps, caption templates and dropped
        captions are drawn on the CPU from the epoch's stream (the same on every device). Every step encodes the
        whole prompt table once (51 short prompts) and picks each image's row, so the text encoder learns from every
        caption in the batch. Returns the summed batch losses."""
        cfg = self.config
        order = torch.randperm(len(x_all), generator=draw)
        params = [*model.unet.parameters(), *model.text_encoder.parameters()]
        total = 0.0
        model.unet.train()
        model.text_encoder.train()
        for done, start in enumerate(range(0, len(order), cfg.batch_size), start=1):
            batch = order[start:start + cfg.batch_size]
            x0, labels = x_all[batch], y_all[batch].long()
            eps = torch.randn(x0.shape, generator=draw)
            t = torch.randint(0, cfg.timesteps, (len(batch),), generator=draw)
            template = torch.randint(0, len(CAPTIONS), (len(batch),), generator=draw)
            rows = 1 + labels * len(CAPTIONS) + template
            if cfg.cond_drop > 0:
                rows[torch.rand(len(batch), generator=draw) < cfg.cond_drop] = 0  # the empty prompt
            states = model.text_encoder(prompt_ids).last_hidden_state
            loss = denoising_loss(model, x0.to(self.device), t.to(self.device), eps.to(self.device),
                                  text=states[rows.to(self.device)])
            optimiser_step(loss, params, optimizer, cfg.grad_clip, schedule, ema)
            total += float(loss.detach())
            progress.advance(1.0, f"epoch {epoch + 1}/{cfg.epochs} · loss {total / done:.4f}")
        return total

    def provenance(self, train: ImageSplit, full: ImageSplit, state: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return {
            **self.image_provenance(train, full, state),
            "captions": {"templates": list(CAPTIONS), "words": list(WORDS), "classes": full.num_classes,
                         "empty_prompt_fraction": cfg.cond_drop},
            "conditioning": {"kind": "text", "empty_prompt": "" if cfg.cond_drop > 0 else None},
            "text_warmup": state.get("text_warmup"),
        }
