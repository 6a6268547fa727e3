"""Diffusion models read from local diffusers directories.

Components are loaded by robustdistill itself from a short allow-list of classes rather than through
``DiffusionPipeline.from_pretrained``: a model_index.json can name arbitrary (custom) pipeline code, and an
untrusted directory must not be able to choose what gets imported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from robustdistill.errors import UserInputError

logger = logging.getLogger(__name__)

Conditioning = Literal["class", "text", "none"]
PROVENANCE_FILE = "robustdistill.json"
MAX_PROVENANCE_BYTES = 64 * 2**20  # a record of every training member of a large dataset stays far below this
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


@dataclass
class DiffusionModel:
    """A denoising UNet with its noise scheduler and whatever conditions it (class labels or text)."""

    unet: Any
    scheduler: Any
    text_encoder: Any = None
    tokenizer: Any = None
    conditioning: Conditioning = "none"
    num_class_embeds: int | None = None
    path: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None  # the real classes (the null class of classifier-free guidance excluded)
    null_class: int | None = None  # the label that means "no class" (classifier-free guidance); None: none trained
    one_step_t: int | None = None  # a one-step generator (SiD): the timestep it denoises pure noise from

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample."""
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(config.in_channels), int(height), int(width))

    def eval(self) -> DiffusionModel:
        self.unet.eval()
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    def to(self, device: str | torch.device) -> DiffusionModel:
        self.unet.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states for ``prompts`` (the UNet's ``encoder_hidden_states``)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise UserInputError("prompts", "this diffusion model is not text-conditioned", "pass class labels instead")
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        return self.text_encoder(tokens["input_ids"].to(self.device)).last_hidden_state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(str(path), f"is not readable JSON ({exc})",
                             "restore the file from the original model") from None


def _load_unet(unet_dir: Path) -> Any:
    import diffusers

    class_name = _read_json(unet_dir / "config.json").get("_class_name")
    if class_name not in UNET_CLASSES:
        raise UserInputError(str(unet_dir / "config.json"), f"_class_name {class_name!r} is not a supported UNet",
                             f"robustdistill reads {', '.join(UNET_CLASSES)}")
    try:
        return getattr(diffusers, class_name).from_pretrained(
            str(unet_dir), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserInputError(str(unet_dir), f"cannot load the UNet: {exc}".splitlines()[0],
                             "the folder needs config.json and diffusion_pytorch_model.safetensors") from None


def _load_scheduler(scheduler_dir: Path | None) -> Any:
    import diffusers
    from diffusers import DDPMScheduler, SchedulerMixin

    if scheduler_dir is None or not (scheduler_dir / "scheduler_config.json").is_file():
        logger.warning("no scheduler_config.json found; using DDPMScheduler defaults (1000 linear-beta steps)")
        return DDPMScheduler()
    class_name = _read_json(scheduler_dir / "scheduler_config.json").get("_class_name", "DDPMScheduler")
    scheduler_cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise UserInputError(str(scheduler_dir), f"unknown scheduler class {class_name!r}",
                             "use one of the schedulers that ship with diffusers, e.g. DDPMScheduler")
    return scheduler_cls.from_pretrained(str(scheduler_dir), local_files_only=True)


def _conditioning(unet: Any, has_text: bool) -> tuple[Conditioning, int | None]:
    config = unet.config
    num_class_embeds = getattr(config, "num_class_embeds", None)
    if type(unet).__name__ == "UNet2DConditionModel" and has_text:
        return "text", num_class_embeds
    if num_class_embeds:
        return "class", int(num_class_embeds)
    if type(unet).__name__ == "UNet2DConditionModel":
        raise UserInputError("text_encoder", "the UNet needs text embeddings but the directory has no text encoder",
                             "add text_encoder/ and tokenizer/ folders next to unet/")
    return "none", None


def load_diffusion_model(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a diffusers directory (model_index.json + component folders) or a bare UNet folder."""
    path = Path(path)
    text_encoder = tokenizer = None
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json")
        if not (path / "unet").is_dir():
            raise UserInputError(str(path), "model_index.json has no unet/ folder beside it",
                                 "robustdistill reads UNet-based pipelines (unet/ + scheduler/)")
        unet = _load_unet(path / "unet")
        scheduler = _load_scheduler(path / "scheduler")
        if "text_encoder" in index or (path / "text_encoder").is_dir():
            text_encoder, tokenizer = _load_text_side(path)
    else:
        unet = _load_unet(path)
        # A bare UNet folder copied out of a pipeline usually has its scheduler beside it.
        candidates = (path / "scheduler", path.parent / "scheduler", path)
        scheduler = _load_scheduler(next((d for d in candidates if (d / "scheduler_config.json").is_file()), None))
    conditioning, num_class_embeds = _conditioning(unet, text_encoder is not None)
    provenance = read_provenance(path)
    classes, null_class, one_step_t = _recorded_conditioning(path, provenance, num_class_embeds, scheduler)
    model = DiffusionModel(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                           conditioning=conditioning, num_class_embeds=num_class_embeds, path=path,
                           provenance=provenance, num_classes=classes, null_class=null_class, one_step_t=one_step_t)
    return model.to(device).eval()


def read_provenance(path: Path) -> dict[str, Any]:
    """robustdistill.json of a directory our diffusion trainers wrote ({} for anyone else's model)."""
    file = path / PROVENANCE_FILE
    if not file.is_file():
        return {}
    if file.stat().st_size > MAX_PROVENANCE_BYTES:
        raise UserInputError(str(file), f"is {file.stat().st_size} bytes, more than provenance ever takes",
                             "restore the file robustdistill wrote, or remove it")
    record = _read_json(file)
    if not isinstance(record, dict):
        raise UserInputError(str(file), "is not a JSON object", "restore the file robustdistill wrote, or remove it")
    return record


def _recorded_conditioning(path: Path, record: dict[str, Any], num_class_embeds: int | None,
                           scheduler: Any) -> tuple[int | None, int | None, int | None]:
    """(real classes, null class, one-step timestep) as robustdistill.json records them, checked against the UNet:
    a hand-edited record must not make the sampler index past the class embedding or the schedule."""
    where = str(path / PROVENANCE_FILE)
    conditioning = record.get("conditioning") or {}
    one_step = record.get("one_step") or {}
    if not isinstance(conditioning, dict) or not isinstance(one_step, dict):
        raise UserInputError(where, "conditioning and one_step must be JSON objects", "restore the file")
    classes, null_class, t_init = conditioning.get("classes"), conditioning.get("null_class"), one_step.get("t_init")
    embeds = int(num_class_embeds or 0)
    checks = (("conditioning.classes", classes, embeds), ("conditioning.null_class", null_class, embeds - 1),
              ("one_step.t_init", t_init, int(scheduler.config.num_train_timesteps) - 1))
    for name, value, top in checks:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top):
            raise UserInputError(f"{where}: {name}", f"{name} = {value!r} in {PROVENANCE_FILE} does not fit the "
                                 f"model (0..{top})", "restore the file robustdistill wrote")
    if classes is None and embeds:
        classes = embeds
    return classes, null_class, t_init


def _load_text_side(path: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, CLIPTextModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar per tiny text encoder is noise
    try:
        text_encoder = CLIPTextModel.from_pretrained(
            str(path / "text_encoder"), local_files_only=True, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(path / "tokenizer"), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(str(path), f"cannot load the text encoder or tokenizer: {exc}".splitlines()[0],
                             "text_encoder/ needs a CLIP text model in safetensors; tokenizer/ its tokenizer files",
                             ) from None
    return text_encoder, tokenizer
