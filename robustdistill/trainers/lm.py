"""Supervised fine-tuning (``sft``) and sequence-level distillation (``seq-kd``) of causal language models.

    robustdistill train sft    --config defenses/instructions-teacher.toml --out checkpoints/lm-teacher
    robustdistill train seq-kd --config defenses/instructions-seq-kd.toml  --out checkpoints/lm-seq-kd

Both minimise the cross-entropy of response tokens (the prompt is masked out) on the train split's non-held-out
examples; seq-kd first replaces each reference answer by the teacher's greedy answer. The shared loop is in
robustdistill.trainers.lm_base.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustdistill.data.instructions import InstructionDataset, InstructionExample
from robustdistill.errors import UserInputError
from robustdistill.models.language import LanguageModel
from robustdistill.models.lm_text import EncodedPair, generate, pad_batch, response_logits, special_ids
from robustdistill.trainers.base import TRAINERS
from robustdistill.trainers.lm_base import LMTrainer, token_cross_entropy
from robustdistill.trainers.lm_config import LMTrainConfig, SeqKDConfig
from robustdistill.trainers.teachers import check_teacher, ensure_teacher
from robustdistill.utils import atomic_path

log = logging.getLogger(__name__)

GENERATIONS_FILE = "teacher-generations.json"


@TRAINERS.register("sft")
class SFTTrainer(LMTrainer):
    """Supervised fine-tuning of a causal LM on instruction data: cross-entropy on response tokens only."""

    config_class = LMTrainConfig
    method = "sft"

    def batch_loss(self, student: LanguageModel, pairs: Sequence[EncodedPair], step: int,
                   generator: torch.Generator) -> torch.Tensor:
        batch = pad_batch(pairs, special_ids(student)[1]).to(self.device)
        return token_cross_entropy(response_logits(student, batch), batch)


class TeacherMixin:
    """A frozen language-model teacher named by ``teacher`` (trained first from ``teacher_recipe`` when missing)."""

    config: Any
    teacher: LanguageModel

    def check_inputs(self) -> None:
        super().check_inputs()  # type: ignore[misc]
        check_teacher(self.config.teacher, self.config.teacher_recipe, what="path/to/model-directory")

    def load_teachers(self) -> None:
        path = ensure_teacher(self.config.teacher, self.config.teacher_recipe)
        self.parent("teacher", path)  # type: ignore[attr-defined]
        self.teacher = self.load_model(path)  # type: ignore[attr-defined]
        self.teacher.model.eval()
        for parameter in self.teacher.model.parameters():
            parameter.requires_grad_(False)


def generations_fingerprint(ids: Sequence[str], responses: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([list(ids), list(responses)], ensure_ascii=True).encode()).hexdigest()


@TRAINERS.register("seq-kd")
class SeqKDTrainer(TeacherMixin, SFTTrainer):
    """Sequence-level knowledge distillation (Kim & Rush, EMNLP 2016): fine-tune on the teacher's answers, greedy
    or sampled (``generation_temperature``).

    The teacher answers every training prompt once, at the start (cached in ``<out>.partial`` so that --resume does
    not generate again); the student is then fine-tuned on those answers instead of the references. It works on
    text, so the student may have another tokenizer than the teacher."""

    config_class = SeqKDConfig
    method = "seq-kd"
    config: SeqKDConfig

    def work_files(self) -> list[str]:
        return [GENERATIONS_FILE]

    def teacher_answers(self, work: Path, train: InstructionDataset) -> list[str]:
        """The teacher's greedy answers to ``train``'s prompts, from the cache when it holds this very request."""
        cfg = self.config
        cache = work / GENERATIONS_FILE
        key = {"teacher_sha256": self.parents[-1]["sha256"], "max_new_tokens": cfg.max_new_tokens,
               "temperature": cfg.generation_temperature, "seed": cfg.seed, "ids": list(train.ids)}
        if cache.is_file():
            try:
                cached = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserInputError("--resume", f"{cache} is not readable JSON ({exc})",
                                     f"delete {work} to start over") from None
            if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()):
                log.info("seq-kd: reusing the teacher's %d cached answers from %s", len(train), cache)
                return [str(text) for text in cached["responses"]]
            raise UserInputError("--resume", f"{cache} holds answers of another teacher or data",
                                 f"delete {work} to start over")
        how = f"sampled at temperature {cfg.generation_temperature:g}" if cfg.generation_temperature else "greedy"
        log.info("seq-kd: the teacher answers %d training prompts (%s, up to %d tokens)", len(train), how,
                 cfg.max_new_tokens)
        responses = generate(self.teacher, [example.prompt for example in train], cfg.max_new_tokens,
                             cfg.generation_batch_size, temperature=cfg.generation_temperature, seed=cfg.seed)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps({**key, "responses": responses}, indent=1) + "\n", encoding="utf-8")
        return responses

    def prepare(self, work: Path, train: InstructionDataset, student: LanguageModel) -> InstructionDataset:
        responses = self.teacher_answers(work, train)
        self.generations = {"n": len(responses), "max_new_tokens": self.config.max_new_tokens,
                            "temperature": self.config.generation_temperature,
                            "fingerprint": generations_fingerprint(train.ids, responses), "file": GENERATIONS_FILE}
        return InstructionDataset(tuple(InstructionExample(e.id, e.prompt, text, e.family, e.held_out)
                                        for e, text in zip(train, responses)))

    def extra_provenance(self) -> dict[str, Any]:
        return {"teacher_generations": self.generations}
