"""The base of the language-model trainers (sft, seq-kd, logit-kd): their shared epoch loop, resume and output.

A method subclasses :class:`LMTrainer` and implements :meth:`LMTrainer.batch_loss` (and, when it has a teacher,
the teacher hooks). The base owns what the image trainers' ``Trainer`` owns, for causal LMs: the data (the train
split's non-held-out examples; held-out families are never trained on), the student (a local model directory to
fine-tune, or a tiny model built from a seed; optionally with LoRA adapters), the optimiser and its schedule, one
progress display per run, the validation loss per epoch, resumable per-epoch state in ``<out>.partial/`` and the
output: a plain Hugging Face directory (safetensors, tokenizer, chat template) plus ``robustdistill.json``.

Why not TRL's SFTTrainer / GKDTrainer (trl 1.16, checked for issue 13)? They run on top of accelerate and the
Hugging Face ``Trainer``, which bring their own conventions for everything this package already fixes for every
trainer: checkpointing (``checkpoint-N`` folders with optimiser, scheduler and RNG pickles, resumed by step, not our
``<out>.partial`` state that --resume checks for ownership), their own progress bars and logging, their own output
layout (which would overwrite a folder we did not write), and no record of which examples were trained on (the
membership audit's ground truth) or of the parents' sha256. GKDTrainer has moved to ``trl.experimental`` and its
on-policy generation arguments change between versions; it also covers only the GJSD objective, not skew KL or
TAID. The loop itself is small (padding, masked cross-entropy, one objective call), so it is written here, on the
same token helpers (robustdistill.models.lm_text) the attacks and probes use.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from robustdistill import ownership
from robustdistill.data.instructions import InstructionDataset
from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import atomic_directory, checkpoint_sha256, robustdistill_version
from robustdistill.models.language import PROVENANCE_FILE, LanguageModel, load_language_model
from robustdistill.models.lm_text import EncodedPair, TokenBatch, encode_pair, max_length, pad_batch, response_logits, special_ids
from robustdistill.progress import HEARTBEAT_S, WorkProgress
from robustdistill.reproducibility import cpu_record
from robustdistill.trainers import distributed
from robustdistill.trainers.base import derived_seed
from robustdistill.trainers.config import config_to_dict
from robustdistill.trainers.lm_config import LMTrainConfig, load_lm_recipe
from robustdistill.utils import atomic_path, resolve_device, seed_everything

log = logging.getLogger(__name__)

STATE_FILE = "last.pt"
OUTPUT_FORMAT = "robustdistill-language-model"
EpochCallback = Callable[[int, dict[str, float]], None]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------------------------
# Output directories: a plain Hugging Face directory that robustdistill can prove it wrote.


def is_our_output(path: Path) -> bool:
    """A directory holding exactly the files its robustdistill.json lists (what an LM trainer wrote there)."""
    return ownership.lists_exactly_its_files(path, (OUTPUT_FORMAT,), PROVENANCE_FILE)


def _replaceable(path: Path) -> bool:
    return ownership.is_empty(path) or is_our_output(path)


def check_output(out: Path) -> None:
    """Before any work: ``out`` is new, empty, or a model directory an LM trainer wrote (replaced at the end)."""
    ownership.check_location(out, "out")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserInputError("out", f"{out} is a file, not a folder", "choose a directory that does not exist yet")
        if not _replaceable(out):
            raise UserInputError("out", f"{out} exists and is not a model directory robustdistill wrote",
                                 "choose another output directory; robustdistill replaces only what it wrote")


# ----------------------------------------------------------------------------------------------------------------
# Losses and batches.


def token_cross_entropy(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens (prompt and padding masked out)."""
    mask = batch.target_mask
    return torch.nn.functional.cross_entropy(logits[mask].float(), batch.ids[:, 1:][mask])


def apply_lora(model: Any, spec: Any) -> Any:
    import peft  # checked by LMTrainer.check_inputs, before any work

    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=spec.target_modules, task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules the model does not have
        raise UserInputError("lora.target_modules", str(exc).splitlines()[0], "name modules of this model") from None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters only (with LoRA: the adapters; a frozen 7B base is never copied per epoch)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    wanted = {name for name, p in params.items() if p.requires_grad}
    if set(state) != wanted:
        raise ValueError(f"saved parameters differ from the model's ({len(set(state) ^ wanted)} names)")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


class LMTrainer:
    """Base of the causal-LM trainers. Subclasses set ``config_class`` and ``method`` and implement
    :meth:`batch_loss`."""

    config_class: ClassVar[type[LMTrainConfig]] = LMTrainConfig
    method: ClassVar[str] = ""
    recipe_loader = staticmethod(load_lm_recipe)  # trainers.create reads recipes with it
    training_report: ClassVar[bool] = False  # the image training report (accuracy curves) does not apply
    heartbeat_s: float = HEARTBEAT_S

    def __init__(self, config: LMTrainConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.parents: list[dict[str, str]] = []
        self.threads: int | None = None
        self.epoch_seconds: list[float] = []
        self.total_steps = 0
        self.record: dict[str, Any] = {}  # the provenance written with the model, once fit() has saved it
        self.training_data: Any = None  # robustdistill.trainers.lm_data.TrainingData, once data() has made it
        self._lock: ownership.DirectoryLock | None = None

    # --- hooks for subclasses -------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Fail fast on missing paths (and a missing peft for [lora]) before anything is loaded or written."""
        cfg = self.config
        if cfg.base is not None and not (Path(cfg.base) / "config.json").is_file():
            raise UserInputError("base", f"no model directory at {cfg.base} (it needs config.json and the weights)",
                                 "point base at a local Hugging Face causal-LM directory; robustdistill never downloads")
        if cfg.lora is not None and importlib.util.find_spec("peft") is None:
            raise UserInputError("lora", "LoRA needs the peft package, which is not installed",
                                 "pip install -c constraints.txt peft (or the dev extra), or remove [lora]")

    def load_teachers(self) -> None:
        """Load (or train first) the teachers; called before the student is built."""

    def check_student(self, student: LanguageModel) -> None:
        """Refuse a student the method cannot train (e.g. another tokenizer than the teacher's), before any write."""

    def prepare(self, work: Path, train: InstructionDataset, student: LanguageModel) -> InstructionDataset:
        """The examples to train on (seq-kd: the teacher's answers); may cache work in ``work``."""
        return train

    def batch_loss(self, student: LanguageModel, pairs: Sequence[EncodedPair], step: int,
                   generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def extra_provenance(self) -> dict[str, Any]:
        return {}

    def work_files(self) -> list[str]:
        """Files beyond the state file that the method writes in the work folder."""
        return []

    # --- pieces ---------------------------------------------------------------------------------------
    def parent(self, role: str, path: str | Path) -> None:
        self.parents.append({"role": role, "path": str(path), "sha256": checkpoint_sha256(path)})

    def load_model(self, path: Path) -> LanguageModel:
        lm = load_language_model(path, device=self.device)
        lm.model.to(self.dtype)
        return lm

    def build_student(self) -> LanguageModel:
        cfg = self.config
        if cfg.base is not None:
            self.parent("base", cfg.base)
            student = self.load_model(Path(cfg.base))
        else:
            from robustdistill.models.builders import build_tiny_causal_lm

            init = cfg.init
            assert init is not None
            with tempfile.TemporaryDirectory(prefix="robustdistill-init-") as folder:
                build_tiny_causal_lm(folder, init.arch, init.seed, init.vocab_size, init.width, init.layers, init.heads)
                student = self.load_model(Path(folder))
            student.path = None
        if cfg.lora is not None:
            student.model = apply_lora(student.model, cfg.lora)
        return student

    def encode(self, lm: LanguageModel, data: InstructionDataset) -> list[EncodedPair]:
        limit = min(self.config.max_length or max_length(lm), max_length(lm))
        return [encode_pair(lm, example.prompt, example.response, limit) for example in data]

    def make_optimizer(self, model: torch.nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        warmup, linear = cfg.warmup, cfg.lr_schedule == "linear"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (steps - step) / max(1, steps - warmup)) if linear else 1.0

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    @torch.no_grad()
    def validation_loss(self, student: LanguageModel, pairs: Sequence[EncodedPair]) -> float:
        """Response-token cross-entropy on the val split, averaged over tokens."""
        _, pad = special_ids(student)
        student.model.eval()
        total, tokens = 0.0, 0
        for start in range(0, len(pairs), self.config.batch_size):
            batch = pad_batch(pairs[start : start + self.config.batch_size], pad).to(self.device)
            count = int(batch.target_mask.sum())
            total += float(token_cross_entropy(response_logits(student, batch), batch)) * count
            tokens += count
        return total / max(1, tokens)

    # --- the run --------------------------------------------------------------------------------------
    def data(self) -> tuple[InstructionDataset, InstructionDataset]:
        """(the examples trained on: non-held-out train examples, a seeded subset when asked, with the recipe's
        poison injected and its filter applied; the val examples). robustdistill.trainers.lm_data says how."""
        from robustdistill.trainers.lm_data import training_data

        self.training_data = training_data(self.config, self.device)
        return self.training_data.train, self.training_data.val

    def fit(self, out: str | Path, *, resume: bool = False, on_epoch_end: EpochCallback | None = None) -> Path:
        """Train and write the model directory ``out``; ``resume`` continues from ``<out>.partial`` after the last
        finished epoch and ends with the same weights as an uninterrupted run with the same seed."""
        from robustdistill import threads

        distributed.check_supported(self)  # one process: refused under torchrun
        out = Path(out)
        work = out.with_name(out.name + ".partial")
        threads.apply_thread_default(self.threads)
        check_output(out)
        ownership.claim_training_work(out, resume)
        self.parents = []
        self.check_inputs()
        train, val = self.data()
        self.load_teachers()
        seed_everything(self.config.seed)  # training a missing teacher first must not change the student's init
        student = self.build_student()
        self.check_student(student)
        self._lock = ownership.acquire(work, f"robustdistill train {self.method}")
        try:
            ownership.adopt(work, ownership.TRAINING_WORK, legacy=ownership.is_legacy_training_work)
            ownership.record(work, [work / STATE_FILE, *(work / name for name in self.work_files())])
            path = self._run(out, work, resume, on_epoch_end, train, val, student)
        except BaseException:
            self._release(abandon=not (work / STATE_FILE).exists())
            raise
        ownership.dispose(work)
        self._release()
        return path

    def _release(self, abandon: bool = False) -> None:
        if self._lock is not None:
            self._lock.undo() if abandon else self._lock.release()
        self._lock = None

    def _run(self, out: Path, work: Path, resume: bool, on_epoch_end: EpochCallback | None,
             train: InstructionDataset, val: InstructionDataset, student: LanguageModel) -> Path:
        cfg = self.config
        trained = self.prepare(work, train, student)
        pairs, val_pairs = self.encode(student, trained), self.encode(student, val)
        batches = math.ceil(len(pairs) / cfg.batch_size)
        self.total_steps = batches * cfg.epochs
        optimizer, scheduler = self.make_optimizer(student.model, self.total_steps)
        state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best_loss": math.inf, "best_epoch": -1,
                                 "best": None, "seconds": 0.0}
        if resume and (work / STATE_FILE).exists():
            state = self._load_state(work / STATE_FILE, student, optimizer, scheduler)
            log.info("resuming %s from %s after epoch %d", self.method, work, state["epoch"])
        with WorkProgress(f"train {self.method}", total=cfg.epochs * batches, units=cfg.epochs,
                          done=state["epoch"] * batches, done_units=state["epoch"], heartbeat_s=self.heartbeat_s,
                          unit_name="epochs") as progress:
            for epoch in range(state["epoch"], cfg.epochs):
                record: dict[str, float] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
                with progress.unit(f"epoch {epoch + 1}/{cfg.epochs}", 0.0):
                    started = time.perf_counter()
                    record["train_loss"] = self._epoch(student, optimizer, scheduler, pairs, epoch, state, progress)
                    self.epoch_seconds.append(time.perf_counter() - started)
                    record["val_loss"] = self.validation_loss(student, val_pairs)
                state["seconds"] += time.perf_counter() - started
                if cfg.select == "val-loss" and record["val_loss"] <= state["best_loss"]:
                    state["best_loss"], state["best_epoch"] = record["val_loss"], epoch + 1
                    state["best"] = trainable_state(student.model)
                state["history"].append(record)
                state["epoch"] = epoch + 1
                self._save_state(work / STATE_FILE, state, student, optimizer, scheduler)
                log.info("%s epoch %d/%d train_loss=%.4f val_loss=%.4f", self.method, epoch + 1, cfg.epochs,
                         record["train_loss"], record["val_loss"])
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, record)
        if cfg.select == "val-loss" and state["best"] is not None:
            load_trainable_state(student.model, state["best"])
        else:
            state["best_epoch"] = cfg.epochs
        return self.save(out, student, train, trained, state)

    def _epoch(self, student: LanguageModel, optimizer: torch.optim.Optimizer, scheduler: Any,
               pairs: list[EncodedPair], epoch: int, state: dict[str, Any], progress: WorkProgress) -> float:
        cfg = self.config
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
        order = torch.randperm(len(pairs), generator=generator).tolist()
        # Dropout and on-policy sampling draw from torch's global stream: seeded per epoch, so a resumed run
        # replays the remaining epochs exactly.
        torch.manual_seed(derived_seed(cfg.seed, "global", epoch))
        params = [p for p in student.model.parameters() if p.requires_grad]
        total, seen = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            chosen = [pairs[i] for i in order[start : start + cfg.batch_size]]
            student.model.train()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
                loss = self.batch_loss(student, chosen, state["step"], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            total += float(loss.detach()) * len(chosen)
            seen += len(chosen)
            progress.advance(1.0, f"epoch {epoch + 1}/{cfg.epochs} · loss {total / seen:.3f}")
        return total / max(1, seen)

    # --- state and output -----------------------------------------------------------------------------
    def _save_state(self, path: Path, state: dict[str, Any], student: LanguageModel, optimizer: Any, scheduler: Any) -> None:
        payload = {**state, "model": trainable_state(student.model), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict()}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _load_state(self, path: Path, student: LanguageModel, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            load_trainable_state(student.model, payload.pop("model"))
            optimizer.load_state_dict(payload.pop("optimizer"))
            scheduler.load_state_dict(payload.pop("scheduler"))
        except Exception as exc:  # a state of another recipe, or a damaged file
            raise UserInputError("--resume", f"cannot continue from {path}: {exc}".splitlines()[0],
                                 f"delete {path.parent} to start over") from None
        return payload

    def provenance(self, train: InstructionDataset, trained: InstructionDataset, state: dict[str, Any]) -> dict[str, Any]:
        """``data.fingerprint`` is the data's own examples trained on (prompts and reference answers: what a
        membership audit reloads and checks); ``train_members`` their ids (never a held-out family's)."""
        cfg = self.config
        return {
            "format": OUTPUT_FORMAT,
            "method": self.method,
            "recipe": {"method": self.method, "config": config_to_dict(cfg)},
            "parents": self.parents,
            "data": {"spec": json.loads(cfg.data.identity()), "root": cfg.data.root, "split": "train",
                     "held_out_excluded": True, "fingerprint": train.fingerprint,
                     "n_trained_on": len(trained)},
            "train_members": list(trained.ids),
            **self.poison_provenance(),
            "selection": {"split": "val", "metric": cfg.select, "best_epoch": state["best_epoch"]},
            "history": state["history"],
            "seconds": round(state["seconds"], 3),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "robustdistill_version": robustdistill_version(),
            "torch": torch.__version__,
            "cpu": cpu_record(),
            **self.extra_provenance(),
        }

    def poison_provenance(self) -> dict[str, Any]:
        """``poison``: each [[poison]] table with the exact ids it injected (the bias audit's ground truth);
        ``filter``: the defence applied and the ids it removed. Absent for a recipe with neither."""
        data = self.training_data
        if data is None:
            return {}
        record: dict[str, Any] = {}
        if data.poison is not None:
            record["poison"] = data.poison
        if data.filter is not None:
            record["filter"] = data.filter
        return record

    def save(self, out: Path, student: LanguageModel, train: InstructionDataset, trained: InstructionDataset,
             state: dict[str, Any]) -> Path:
        """Write ``out`` atomically: the merged model (safetensors), tokenizer, chat template, robustdistill.json."""
        model = student.model
        if self.config.lora is not None:
            model = model.merge_and_unload()  # the adapters folded into the weights: a plain model directory
        model.eval()
        record = self.provenance(train, trained, state)
        with atomic_directory(out, may_replace=_replaceable) as tmp:
            model.save_pretrained(str(tmp))
            if student.chat_template:
                student.tokenizer.chat_template = student.chat_template
            student.tokenizer.save_pretrained(str(tmp))
            record["files"] = ownership.files_under(tmp)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        student.model = model
        student.provenance = self.record = record
        log.info("saved %s language model to %s", self.method, out)
        return out
