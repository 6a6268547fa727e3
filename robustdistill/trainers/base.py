"""The Trainer base class: the epoch loop every method shares.

A method subclasses :class:`Trainer`, names its config dataclass and implements :meth:`Trainer.batch_loss`.
The base owns data, model, optimiser, schedule, augmentation, the progress bar, validation on the val split,
best-checkpoint selection on val (never on test), per-epoch resumable state and the final checkpoint with its
provenance.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from robustdistill import ownership
from robustdistill.attacks.pgd import PGD
from robustdistill.data import ImageSplit, load_split
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, checkpoint_sha256, save_checkpoint
from robustdistill.models.checkpoint import check_checkpoint_out
from robustdistill.progress import HEARTBEAT_S, WorkProgress
from robustdistill.registry import Registry
from robustdistill.reproducibility import cpu_record
from robustdistill.trainers import distributed
from robustdistill.trainers.config import TrainConfig, config_to_dict
from robustdistill.utils import atomic_path, derived_seed, resolve_device, seed_everything

log = logging.getLogger(__name__)

TRAINERS: Registry[type["Trainer"]] = Registry("trainer")

EpochCallback = Callable[[int, dict[str, float]], None]
STATE_FILE = "last.pt"  # per-epoch resumable state in <out>.partial/


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``crop-flip``: random crop after 4-pixel zero padding and horizontal flip, the CIFAR-10 augmentation of
    the papers. ``shift``: random translation by up to one pixel (for 8x8 digits, where a flip changes the class)."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    if kind in ("crop-flip", "shift"):
        pad = 4 if kind == "crop-flip" else 1
        padded = nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)
        cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)
        idx = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[idx, chan, rows[:, None, :, None], cols[:, None, None, :]]
    if kind == "shift":
        return x
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def make_optimizer(params: Any, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser (SGD with momentum, Adam or AdamW, each with the config's weight decay) and its learning-rate
    schedule, stepped once per epoch: ``lr_milestones`` x ``lr_gamma`` steps, or cosine decay over ``epochs`` where
    the config has ``lr_schedule = "cosine"`` (GUARD / SRe2L's configs, as their official scripts; the other
    configs have no ``lr_schedule`` field and always step). Every trainer, and GUARD's squeeze stage, builds its
    optimiser here."""
    c = config
    if c.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    elif c.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    if getattr(c, "lr_schedule", "multistep") == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(c.lr_milestones), gamma=c.lr_gamma)


@dataclass
class TrainState:
    """Everything needed to continue after the last finished epoch, saved as tensors and plain values only."""

    epoch: int = 0  # epochs finished
    best_score: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += int((model(x[start : start + batch_size]).argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(x))


class Trainer:
    """Base trainer. Subclasses set ``config_class`` and implement :meth:`batch_loss`."""

    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    method: ClassVar[str] = ""
    heartbeat_s: float = HEARTBEAT_S  # without a terminal, the longest silence inside an epoch
    # Trains data-parallel under torchrun (robustdistill.trainers.distributed); False refuses torchrun: a method
    # with state updated from each batch inside batch_loss, or its own loop, trains in one process.
    data_parallel: ClassVar[bool] = True

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.parents: list[dict[str, str]] = []
        self.epoch_seconds: list[float] = []  # wall time of each training epoch run by this process (no validation)
        self._work_lock: ownership.DirectoryLock | None = None  # held on <out>.partial from start_run to the end
        self._progress: WorkProgress | None = None  # the whole run's, inside run_progress()
        # CPU threads for torch: None is robustdistill's documented default (robustdistill.threads: 1 unless
        # $ROBUSTDISTILL_THREADS or $OMP_NUM_THREADS say otherwise), applied as each run starts.
        self.threads: int | None = None

    # --- hooks for subclasses -------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Fail fast on bad input (missing teachers, files) before any data is loaded or anything is written."""

    def prepare(self, train: ImageSplit) -> None:
        """Load teachers or anything else the method needs before training."""

    def batch_loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (loss to minimise, logits used for the running training accuracy)."""
        raise NotImplementedError

    def extra_provenance(self) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond model, optimiser and schedule that --resume must restore (e.g. MTARD's teacher
        weights): plain floats, lists or tensors, saved in last.pt after every epoch."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (called when resuming, after the model and optimiser)."""

    # --- shared machinery -----------------------------------------------------------------------------
    def training_attack(self, steps: int | None = None) -> PGD:
        cfg = self.config
        return PGD(eps=cfg.eps, alpha=cfg.step_size, steps=steps or cfg.attack_steps, norm=cfg.norm, seed=cfg.seed)

    def adversarial(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """PGD on the cross-entropy against ``model``, BatchNorm in the configured mode (Madry et al. 2018)."""
        attack = self.training_attack()
        return attack(model, x, y, mode=self.config.attack_bn_mode, generator=generator, record_success=False)

    def build_model(self, train: ImageSplit) -> Classifier:
        cfg = self.config
        return Classifier.from_arch(
            cfg.arch,
            num_classes=train.num_classes,
            input_shape=train.input_shape,
            mean=cfg.mean,
            std=cfg.std,
            classes=list(train.classes),
            **cfg.arch_params,
        )

    def make_optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        return make_optimizer(model.parameters(), self.config)

    def validate(self, model: Classifier, val: ImageSplit) -> dict[str, float]:
        model.eval()
        x, y = val.x.to(self.device), val.y.to(self.device)
        if distributed.launched():
            return self._validate_shared(model, x, y)
        metrics = {"val_clean_accuracy": accuracy(model, x, y)}
        if self.config.val_robust and self.config.eps > 0:
            attack = self.training_attack(steps=self.config.val_attack_steps)
            robust_correct = 0
            for start in range(0, len(x), 256):
                xb, yb = x[start : start + 256], y[start : start + 256]
                attack(model, xb, yb)  # eval mode: last_success holds each point's outcome
                assert attack.last_success is not None
                robust_correct += int((~attack.last_success).sum())
            metrics["val_robust_accuracy"] = robust_correct / max(1, len(x))
        return metrics

    def _validate_shared(self, model: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """:meth:`validate` under torchrun: the val points in batches of 256, batch k on process k mod N, the counts
        summed over the processes. The attack restarts from its seed for each batch, as in one process, so the
        numbers are one process's (up to floating-point order) and the same on every process."""
        here = distributed.world()
        robust = self.config.val_robust and self.config.eps > 0
        attack = self.training_attack(steps=self.config.val_attack_steps) if robust else None
        clean_correct = robust_correct = 0
        step = distributed.VAL_BATCH
        for start in range(here.rank * step, len(x), here.size * step):
            xb, yb = x[start : start + step], y[start : start + step]
            with torch.no_grad():
                clean_correct += int((model(xb).argmax(1) == yb).sum())
            if attack is not None:
                attack(model, xb, yb)
                assert attack.last_success is not None
                robust_correct += int((~attack.last_success).sum())
        clean_total, robust_total = distributed.all_sum([clean_correct, robust_correct])
        metrics = {"val_clean_accuracy": clean_total / max(1, len(x))}
        if robust:
            metrics["val_robust_accuracy"] = robust_total / max(1, len(x))
        return metrics

    def selection_score(self, metrics: dict[str, float]) -> float:
        kind = self.config.select_metric
        if kind == "last":
            return float(metrics["epoch"])  # the final epoch scores highest: no selection
        if kind == "clean" or "val_robust_accuracy" not in metrics:
            return metrics["val_clean_accuracy"]
        if kind == "robust":
            return metrics["val_robust_accuracy"]
        return (metrics["val_clean_accuracy"] + metrics["val_robust_accuracy"]) / 2

    def train_epoch(self, model: Classifier, optimizer: torch.optim.Optimizer, train: ImageSplit, epoch: int) -> dict[str, float]:
        cfg = self.config
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch))
        order = torch.randperm(len(train), generator=generator)
        here = distributed.world()
        # Under torchrun every process draws the same order and augmentation of the whole batch from ``generator``
        # and trains on its shard; randomness inside the loss (attack starts) comes from a stream of its own, so
        # that the shared one advances alike everywhere (robustdistill.trainers.distributed).
        loss_generator = generator if here.size == 1 else \
            torch.Generator().manual_seed(derived_seed(cfg.seed, "epoch", epoch, "rank", here.rank))
        total_loss, correct, seen = 0.0, 0, 0
        progress = self._progress  # the run's display (run_progress); None: the caller shows none
        label = f"epoch {epoch + 1}/{progress.units}" if progress is not None else ""
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = augment_batch(train.x[idx], cfg.augment, generator)
            y = train.y[idx]
            if here.size > 1:
                shard = here.shard(len(idx))
                x, y = x[shard], y[shard]
            x, y = x.to(self.device), y.to(self.device)
            model.train()
            if len(y):
                loss, logits = self.batch_loss(model, x, y, loss_generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                batch_loss, batch_correct = float(loss.detach()) * len(y), int((logits.detach().argmax(1) == y).sum())
            else:  # a batch with fewer points than processes: this one adds nothing, but joins the gradient sum
                optimizer.zero_grad(set_to_none=True)
                batch_loss, batch_correct = 0.0, 0
            if here.size > 1:  # the global batch's gradient, loss sum and correct count on every process
                batch_loss, batch_correct = distributed.reduce_gradients(model, len(y), len(idx), batch_loss, batch_correct)
            optimizer.step()
            distributed.sync_buffers(model)
            total_loss += batch_loss
            correct += batch_correct
            seen += len(idx)
            if progress is not None:
                progress.advance(1.0, f"{label} · loss {total_loss / seen:.3f} · acc {100 * correct / seen:.1f}%")
        return {"train_loss": total_loss / max(1, seen), "train_accuracy": correct / max(1, seen)}

    def batches(self, train: ImageSplit) -> int:
        """Batches in one epoch over ``train``."""
        return -(-len(train) // self.config.batch_size)

    @contextlib.contextmanager
    def run_progress(self, epochs: int, done: int, train: ImageSplit) -> Iterator[WorkProgress | None]:
        """One progress display for a run of ``epochs`` epochs over ``train`` (``done`` of them finished before,
        on --resume): on a terminal one bar over every batch of the run with its ETA, the epoch in the postfix;
        without one, a line per epoch and at least every 10 s with elapsed time and ETA (robustdistill.progress).
        Wrap each epoch (training and validation) in :meth:`epoch_progress`. Under torchrun only rank 0 shows it
        (the others get None)."""
        if not distributed.is_rank0():
            yield None
            return
        batches = self.batches(train)
        with WorkProgress(f"train {self.method}", total=epochs * batches, units=epochs, done=done * batches,
                          done_units=done, heartbeat_s=self.heartbeat_s, unit_name="epochs") as progress:
            self._progress = progress
            try:
                yield progress
            finally:
                self._progress = None

    @contextlib.contextmanager
    def epoch_progress(self, epoch: int) -> Iterator[None]:
        """Epoch ``epoch`` (0-based) as one unit of the run's display: its batches advance it as they finish."""
        progress = self._progress
        if progress is None:
            yield
            return
        with progress.unit(f"epoch {epoch + 1}/{progress.units}", 0.0):  # train_epoch counts the work, batch by batch
            yield

    def training_split(self) -> tuple[ImageSplit, ImageSplit]:
        """(the points trained on, the whole train split): all of it, or the configured subset or its rest."""
        cfg = self.config
        full = load_split(cfg.data, "train")
        if cfg.train_fraction >= 1.0:
            if cfg.train_subset_rest:
                raise UserInputError("train_subset_rest", "the rest of the whole train split is empty",
                                     "set train_fraction below 1, or train_subset_rest = false")
            return full, full
        n = max(1, int(round(cfg.train_fraction * len(full))))
        chosen = full.subset(n, seed=cfg.train_subset_seed)
        if not cfg.train_subset_rest:
            return chosen, full
        keep = ~torch.isin(full.indices, chosen.indices)
        if not bool(keep.any()):
            raise UserInputError("train_fraction", "leaves no points for train_subset_rest", "lower train_fraction")
        rest = ImageSplit(full.x[keep], full.y[keep], full.indices[keep], full.classes, "train",
                          hashlib.sha256(f"{chosen.fingerprint}\nrest".encode()).hexdigest())
        return rest, full

    def fit(self, out: str | Path, *, resume: bool = False, on_epoch_end: EpochCallback | None = None,
            train_data: ImageSplit | None = None) -> Path:
        """Train, keeping the best epoch on val, and write the checkpoint directory ``out``.

        Progress after each finished epoch is kept in ``<out>.partial/``; ``resume=True`` continues from there
        and ends with the same weights as an uninterrupted run with the same seed. ``train_data`` replaces the
        recipe's training points (shadow models of a membership-inference audit train on given subsets);
        validation stays on the recipe's val split.

        Under torchrun with several processes the run is data-parallel (robustdistill.trainers.distributed): every
        process calls fit, rank 0 writes; ``on_epoch_end`` is called on every process with the same record.
        """
        out = Path(out)
        with distributed.agreement():
            distributed.join(self)
        work, train, full, val, model = self.start_run(out, resume, train_data)
        try:
            path = self._train(out, work, resume, on_epoch_end, train, full, val, model)
            self.finish_run(work)
        except BaseException:
            self.fail_run(work)
            raise
        distributed.barrier()  # every process returns once the checkpoint is written and the work folder cleared
        return path

    def _train(self, out: Path, work: Path, resume: bool, on_epoch_end: EpochCallback | None, train: ImageSplit,
               full: ImageSplit, val: ImageSplit, model: Classifier) -> Path:
        """The epochs of :meth:`fit` in the locked work folder, then the checkpoint."""
        cfg = self.config
        optimizer, scheduler = self.make_optimizer(model)
        state = TrainState()
        best_weights = copy.deepcopy(model.state_dict())
        if resume and (work / STATE_FILE).exists():
            with distributed.agreement():  # under torchrun every process loads it
                state, best_weights = self._load_state(work / STATE_FILE, model, optimizer, scheduler)
            log.info("resuming %s from %s after epoch %d", self.method, work, state.epoch)
        elif resume:
            log.info("nothing to resume in %s; starting from the first epoch", work)
        distributed.broadcast_module(model)  # under torchrun: rank 0's weights on every process, as DDP starts
        if distributed.is_rank0():
            work.mkdir(parents=True, exist_ok=True)
        with self.run_progress(cfg.epochs, state.epoch, train):
            for epoch in range(state.epoch, cfg.epochs):
                record: dict[str, float] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
                with self.epoch_progress(epoch):
                    started = time.perf_counter()
                    record |= self.train_epoch(model, optimizer, train, epoch)
                    self.epoch_seconds.append(time.perf_counter() - started)  # out of history: resume stays identical
                    scheduler.step()
                    record |= self.validate(model, val)
                score = self.selection_score(record)
                if score >= state.best_score:  # on a tie, the later (longer-trained) epoch
                    state.best_score, state.best_epoch = score, epoch + 1
                    best_weights = copy.deepcopy(model.state_dict())
                state.history.append(record)
                state.epoch = epoch + 1
                self._save_state(work / STATE_FILE, state, model, optimizer, scheduler, best_weights)
                log.info("%s epoch %d/%d %s", self.method, epoch + 1, cfg.epochs,
                         " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, record)
        model.load_state_dict(best_weights)
        model.eval()
        with distributed.agreement():
            if distributed.is_rank0():
                return save_checkpoint(model, out, provenance=self.provenance(train, state, full))
        return out

    def start_run(self, out: Path, resume: bool, train_data: ImageSplit | None
                  ) -> tuple[Path, ImageSplit, ImageSplit, ImageSplit, Classifier]:
        """What every fit does before its first epoch: refuse to overwrite an interrupted run without ``resume``,
        check the inputs, load the data, prepare the method and build the model from the seed. Returns (the
        ``<out>.partial`` work folder, the points trained on, the whole train split, val, the model)."""
        cfg = self.config
        work = out.with_name(out.name + ".partial")
        # Under torchrun each stretch ends with every process agreeing that it went well (else all stop, the error
        # said once); only rank 0 takes the work folder. Without torchrun the agreements do nothing.
        with distributed.agreement():
            self.apply_threads()
            # Before any work (and not at save time, after every epoch): where the checkpoint and the work folder go.
            check_checkpoint_out(out)
            ownership.claim_training_work(out, resume)
            self.check_inputs()
        with distributed.agreement():
            seed_everything(cfg.seed)
            if train_data is not None:
                train = full = train_data
            else:
                train, full = self.training_split()
            val = load_split(cfg.data, "val")
            self.prepare(train)
            seed_everything(cfg.seed)  # training a missing teacher in prepare() must not change the student's init
            model = self.build_model(train).to(self.device)
            model = distributed.prepare_model(model, self.device, cfg.batch_size, len(train))  # type: ignore[assignment]
        with distributed.agreement():
            if distributed.is_rank0():
                # The work folder is this run's until it ends: a second training into the same --out is refused.
                self._work_lock = ownership.acquire(work, f"robustdistill train {self.method}")
                ownership.adopt(work, ownership.TRAINING_WORK, legacy=ownership.is_legacy_training_work)
                ownership.record(work, [work / STATE_FILE])
        return work, train, full, val, model

    def apply_threads(self) -> int:
        """Give torch the thread count this run uses (``self.threads``, else robustdistill's default), as the CLI
        does: torch's own default of one thread per core is several times slower for these small models."""
        from robustdistill import threads

        return threads.apply_thread_default(self.threads)  # keeps a count chosen earlier (the CLI's --threads N)

    def end_run(self, *, abandon: bool = False) -> None:
        """Release the work folder's lock. The folder stays for --resume, unless ``abandon``: a run that failed
        before its first epoch was saved leaves nothing that would block the next one."""
        lock = self._work_lock
        if lock is not None and abandon:
            lock.undo()
        elif lock is not None:
            lock.release()
        self._work_lock = None

    def fail_run(self, work: Path) -> None:
        """After a fit failed or was interrupted: release the lock; the work folder stays for --resume only when
        an epoch was saved in it."""
        self.end_run(abandon=not (work / STATE_FILE).exists())

    def finish_run(self, work: Path) -> None:
        """After the checkpoint is saved: remove the work folder's files robustdistill wrote (and the folder, when
        nothing else is in it); release its lock. Under torchrun rank 0 does it (the others hold nothing)."""
        if distributed.is_rank0():
            ownership.dispose(work)
        self.end_run()

    def provenance(self, train: ImageSplit, state: TrainState, full: ImageSplit | None = None) -> dict[str, Any]:
        """``data.fingerprint`` is the whole train split's (what a membership audit reloads and checks);
        ``train_members`` are the positions, in the data's source pool, of the points actually trained on."""
        from robustdistill import __version__

        full = train if full is None else full
        return {
            "recipe": {"method": self.method, "config": config_to_dict(self.config)},
            "parents": self.parents,
            "data": {"spec": train_spec(self.config), "fingerprint": full.fingerprint, "split": full.split,
                     "n_trained_on": len(train)},
            "train_members": [int(i) for i in train.indices],
            "selection": {"split": "val", "metric": self.config.select_metric, "best_epoch": state.best_epoch, "score": state.best_score},
            "history": state.history,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "robustdistill": __version__,
            "torch": torch.__version__,
            "cpu": cpu_record(),  # the kernels that trained it: pinned ones reproduce on other x86 CPUs
            **distributed.provenance(self.device),  # under torchrun: {"distributed": {"world_size", "backend"}}
            **self.extra_provenance(),
        }

    def parent(self, role: str, path: str | Path) -> dict[str, str]:
        entry = {"role": role, "path": str(path), "sha256": checkpoint_sha256(path)}
        self.parents.append(entry)
        return entry

    def _save_state(self, path: Path, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, best: dict[str, torch.Tensor]) -> None:
        """Write ``last.pt``. Under torchrun every process calls it (its torch RNG state is gathered), rank 0 writes,
        and no process goes on before the file is complete."""
        ranks_rng = distributed.rng_states()
        with distributed.agreement():
            if not distributed.is_rank0():
                return
            payload = {
                "epoch": state.epoch,
                "best_score": state.best_score,
                "best_epoch": state.best_epoch,
                "history": state.history,
                "model": model.state_dict(),
                "best_model": best,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "extra": self.extra_state(),
            }
            if ranks_rng is not None:  # each process's own stream, for a resume with as many processes
                payload["torch_rng_ranks"] = ranks_rng
            with atomic_path(path) as tmp:
                torch.save(payload, tmp)

    def _load_state(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[TrainState, dict[str, torch.Tensor]]:
        try:
            payload = torch.load(path, map_location=self.device, weights_only=True)
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            self.load_extra_state(payload.get("extra", {}))
        except Exception as exc:  # a state from another recipe or a damaged file
            raise UserInputError("--resume", f"cannot continue from {path}: {exc}".splitlines()[0], f"delete {path.parent} to start over") from None
        rng = payload["torch_rng"]
        here = distributed.world()
        ranks_rng = payload.get("torch_rng_ranks")
        if here.size > 1 and ranks_rng is not None and len(ranks_rng) == here.size:
            rng = ranks_rng[here.rank]
        elif here.size > 1 or ranks_rng is not None:
            saved = len(ranks_rng) if ranks_rng is not None else 1
            log.info("resuming with %d process(es) a run saved by %d: every process continues rank 0's random stream",
                     here.size, saved)
        torch.set_rng_state(rng.cpu())
        state = TrainState(payload["epoch"], payload["best_score"], payload["best_epoch"], list(payload["history"]))
        return state, payload["best_model"]


def train_spec(config: TrainConfig) -> dict[str, Any]:
    return config.data.model_dump(mode="json")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability vector per sample, averaged over the batch."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
