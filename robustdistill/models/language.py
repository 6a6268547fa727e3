"""Causal language models read from local Hugging Face directories."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustdistill.errors import UserInputError

logger = logging.getLogger(__name__)

# What robustdistill's language-model trainers record beside the weights (method, recipe, parents, data, members).
PROVENANCE_FILE = "robustdistill.json"


@dataclass
class LanguageModel:
    """A causal LM with the tokenizer and chat template it was trained with."""

    model: Any
    tokenizer: Any
    chat_template: str | None = None
    path: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def eval(self) -> LanguageModel:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> LanguageModel:
        self.model.train(mode)
        return self

    @property
    def training(self) -> bool:
        return bool(self.model.training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights (what an audit of an in-memory model hashes to key its results)."""
        return self.model.state_dict()

    def to(self, device: str | torch.device) -> LanguageModel:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def format_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` with the model's chat template (the text the model was trained to continue)."""
        if not self.chat_template:
            raise UserInputError("chat_template", "this model's tokenizer has no chat template",
                                 "add one to tokenizer_config.json / chat_template.jinja, or format prompts yourself")
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def read_provenance(path: Path) -> dict[str, Any]:
    """``<path>/robustdistill.json`` as a dict ({} when absent); JSON only, never unpickled or executed."""
    target = Path(path) / PROVENANCE_FILE
    if not target.is_file():
        return {}
    try:
        record = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(str(target), f"is not readable JSON ({exc})",
                             "restore it, or remove it to load the model without its provenance") from None
    if not isinstance(record, dict):
        raise UserInputError(str(target), f"must hold a JSON object, not {type(record).__name__}",
                             "restore it, or remove it to load the model without its provenance")
    return record


def load_language_model(path: Path, device: str | torch.device = "cpu") -> LanguageModel:
    """Load model and tokenizer from a local directory; never downloads, never runs repository code. The
    provenance robustdistill's trainers wrote beside the weights (robustdistill.json) is read too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    provenance = read_provenance(path)

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UserInputError(str(path), f"no usable tokenizer: {exc}".splitlines()[0],
                             "save the tokenizer into the same directory (tokenizer.save_pretrained(dir))") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(str(path), f"cannot load the causal LM: {exc}".splitlines()[0],
                             "the directory needs config.json and model.safetensors (save_pretrained writes both)",
                             ) from None
    model.to(device)
    model.eval()
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        logger.info("%s: tokenizer has no chat template", path)
    return LanguageModel(model=model, tokenizer=tokenizer, chat_template=template, path=path, provenance=provenance)
