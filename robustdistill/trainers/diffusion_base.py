"""What the diffusion trainers (ddpm, sid; sfd builds on sid) share: the run in ``<out>.partial/`` with its lock
and --resume, and the output - a diffusers directory (model_index.json, unet/, scheduler/) plus robustdistill.json,
which robustdistill can later prove it wrote (the files it lists are exactly the directory's), so a second run may
replace it and nothing else.

A trainer subclasses :class:`DiffusionTrainer` and implements :meth:`~DiffusionTrainer.prepare` (check inputs, load
what it needs; before any folder is touched) and :meth:`~DiffusionTrainer.run` (train, save state after each epoch,
write ``out`` with :meth:`~DiffusionTrainer.save`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from robustdistill import ownership
from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import atomic_directory, robustdistill_version
from robustdistill.models.diffusion import PROVENANCE_FILE
from robustdistill.progress import HEARTBEAT_S
from robustdistill.reproducibility import cpu_record
from robustdistill.trainers import distributed
from robustdistill.utils import atomic_path, resolve_device

log = logging.getLogger(__name__)

STATE_FILE = "last.pt"
OUTPUT_FORMATS = ("robustdistill-ddpm", "robustdistill-t2i", "robustdistill-one-step-generator")


def is_our_output(path: Path) -> bool:
    """A directory holding exactly the files its robustdistill.json lists (what a diffusion trainer wrote there)."""
    return ownership.lists_exactly_its_files(path, OUTPUT_FORMATS, PROVENANCE_FILE)


def replaceable(path: Path) -> bool:
    return ownership.is_empty(path) or is_our_output(path)


def training_images(config: Any) -> tuple[Any, Any]:
    """(the images trained on, the whole train split): all of it, or a seeded class-balanced ``train_fraction``."""
    from robustdistill.data import load_split

    full = load_split(config.data, "train")
    if config.train_fraction >= 1.0:
        return full, full
    n = max(full.num_classes, int(round(config.train_fraction * len(full))))  # every class at least once
    return full.subset(n, seed=config.train_subset_seed), full


def set_trainable(module: torch.nn.Module, trainable: bool) -> torch.nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)
    return module


def optimiser_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   grad_clip: float | None, schedule: Any = None, ema: Any = None) -> None:
    """Backpropagate ``loss`` and update ``params``: gradient clipping (max global norm), the optimiser, then the
    learning-rate schedule and the EMA when given."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    if ema is not None:
        ema.step(params)


class DiffusionTrainer:
    """The run and the output of a diffusion trainer; subclasses train."""

    method: ClassVar[str]
    output_format: ClassVar[str]
    index_class: ClassVar[str]  # model_index.json's _class_name
    training_report: ClassVar[bool] = False  # no accuracy curves: a generator
    heartbeat_s: float = HEARTBEAT_S

    def __init__(self, config: Any) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.parents: list[dict[str, str]] = []
        self.threads: int | None = None
        self.record: dict[str, Any] = {}
        self._lock: ownership.DirectoryLock | None = None

    def prepare(self) -> Any:
        """Check the inputs and load what the run needs; raises UserInputError before anything is written."""
        raise NotImplementedError

    def run(self, out: Path, work: Path, resume: bool, prepared: Any) -> Path:
        raise NotImplementedError

    def work_files(self) -> list[str]:
        """Files besides last.pt the run keeps in its work folder."""
        return []

    def fit(self, out: str | Path, *, resume: bool = False) -> Path:
        """Train and write the directory ``out``; ``resume`` continues from ``<out>.partial`` after the last finished
        epoch and ends with the same weights as an uninterrupted run with the same seed."""
        from robustdistill import threads

        distributed.check_supported(self)  # one process: refused under torchrun
        out = Path(out)
        work = out.with_name(out.name + ".partial")
        threads.apply_thread_default(self.threads)
        ownership.check_location(out, "out")
        if (out.exists() or out.is_symlink()) and not (out.is_dir() and replaceable(out)):
            raise UserInputError("out", f"{out} exists and is not a diffusion model directory robustdistill wrote",
                                 "choose another output directory; robustdistill replaces only what it wrote")
        ownership.claim_training_work(out, resume)
        self.parents = []
        prepared = self.prepare()
        self._lock = ownership.acquire(work, f"robustdistill train {self.method}")
        try:
            ownership.adopt(work, ownership.TRAINING_WORK, legacy=ownership.is_legacy_training_work)
            ownership.record(work, [work / STATE_FILE, *(work / name for name in self.work_files())])
            path = self.run(out, work, resume, prepared)
        except BaseException:
            if self._lock is not None:
                self._lock.release() if (work / STATE_FILE).exists() else self._lock.undo()
            self._lock = None
            raise
        ownership.dispose(work)
        self._lock.release()
        self._lock = None
        return path

    # --- state ----------------------------------------------------------------------------------------
    def _settings(self) -> str:
        from robustdistill.trainers.config import config_to_dict

        settings = config_to_dict(self.config)
        settings.pop("device", None)  # a run may continue on another device
        return json.dumps(settings, sort_keys=True)

    def save_state(self, path: Path, payload: dict[str, Any]) -> None:
        """The run's state after an epoch, with its settings (a --resume with other settings is refused)."""
        with atomic_path(path) as tmp:
            torch.save({**payload, "settings": self._settings()}, tmp)

    def load_state(self, path: Path) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file
            raise UserInputError("--resume", f"cannot read {path}: {exc}".splitlines()[0],
                                 f"delete {path.parent} to start over") from None
        if payload.pop("settings", None) != self._settings():
            raise UserInputError("--resume", f"the run interrupted in {path.parent} had other settings",
                                 f"resume with the recipe and overrides it was started with, or delete {path.parent}")
        return payload

    def restore(self, path: Path, parts: dict[str, Any], ema: Any) -> dict[str, Any]:
        """Load the saved state into ``parts`` (name -> anything with load_state_dict: networks, optimiser, schedule)
        and the EMA; returns what is left of it (epoch, history, seconds...)."""
        payload = self.load_state(path)
        try:
            for name, part in parts.items():
                part.load_state_dict(payload.pop(name))
            saved_ema = payload.pop("ema")
            if ema is not None:
                ema.load_state_dict(saved_ema)
        except Exception as exc:  # the state of another recipe
            raise UserInputError("--resume", f"cannot continue from {path}: {exc}".splitlines()[0],
                                 f"delete {path.parent} to start over") from None
        return payload

    # --- output ---------------------------------------------------------------------------------------
    def common_provenance(self) -> dict[str, Any]:
        from robustdistill.trainers.config import config_to_dict

        return {
            "format": self.output_format,
            "method": self.method,
            "recipe": {"method": self.method, "config": config_to_dict(self.config)},
            "parents": self.parents,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "robustdistill_version": robustdistill_version(),
            "torch": torch.__version__,
            "cpu": cpu_record(),
        }

    def image_provenance(self, train: Any, full: Any, state: dict[str, Any]) -> dict[str, Any]:
        """What a model trained on images records: the data (the whole train split's fingerprint, which a membership
        audit reloads and checks), exactly which images it trained on, and its history."""
        return {
            **self.common_provenance(),
            "data": {"spec": self.config.data.model_dump(mode="json"), "fingerprint": full.fingerprint,
                     "split": "train", "n_trained_on": len(train)},
            "train_members": [int(i) for i in train.indices],
            "selection": {"metric": "last", "best_epoch": state["epoch"]},
            "history": state["history"],
            "seconds": round(state["seconds"], 3),
        }

    def save(self, out: Path, unet: Any, scheduler: Any, record: dict[str, Any], *, text_encoder: Any = None,
             tokenizer: Any = None) -> Path:
        """Write ``out`` atomically: model_index.json, unet/, scheduler/ (and a text model's text_encoder/ in
        safetensors and tokenizer/) and robustdistill.json (``record`` plus the list of files written)."""
        import diffusers

        index = {"_class_name": self.index_class, "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", type(scheduler).__name__], "unet": ["diffusers", type(unet).__name__]}
        if text_encoder is not None:
            index["text_encoder"] = ["transformers", type(text_encoder).__name__]
            index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]  # TokenizersBackend in transformers 5
        with atomic_directory(out, may_replace=replaceable) as tmp:
            unet.save_pretrained(str(tmp / "unet"))
            scheduler.save_pretrained(str(tmp / "scheduler"))
            if text_encoder is not None:
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # a "Writing model shards" bar for one tiny file is noise
                text_encoder.save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
                tokenizer.save_pretrained(str(tmp / "tokenizer"))
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            record["files"] = ownership.files_under(tmp)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        self.record = record
        log.info("saved the %s model to %s", self.method, out)
        return out
