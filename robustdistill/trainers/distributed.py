"""Data-parallel training of the image-classifier trainers under torchrun.

    torchrun --standalone --nproc_per_node=N -m robustdistill train METHOD --config RECIPE --out OUT [--resume]

(or ``python -m torch.distributed.run ...`` with the same arguments). torchrun starts N processes and tells each its
place in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); this module reads it, joins the processes in a
process group (gloo for the CPU, nccl for CUDA, where each process trains on ``cuda:LOCAL_RANK``) and does the few
collective operations the shared epoch loop of :class:`robustdistill.trainers.base.Trainer` needs. The run gives
the result of one process up to floating-point order: the same global batches, the same learning-rate schedule,
the same selection on val, one checkpoint. Without torchrun (or with one process) nothing here does anything: no
process group, no collective, the code path and the numbers of today.

How a step is split:

- Every process draws the same epoch permutation and the same augmentation of the whole global batch from the
  same generator (so the shared random stream advances identically everywhere), then trains on its contiguous
  shard of the batch (:meth:`World.shard`): sizes differ by at most one point; a batch with fewer points than
  processes leaves some shards empty.
- Each process's loss is the mean over its shard. After ``loss.backward()`` the gradients are summed over the
  processes with ONE ``all_reduce`` of a flat buffer (:func:`reduce_gradients`), each process's part scaled by
  ``len(shard) / len(batch)``: the sum is the gradient of the mean over the global batch, also for unequal shards
  (the last batch) and for an empty shard, whose process still joins with zeros. The same buffer carries the
  shard's loss sum and correct count, so rank 0's running loss and accuracy are the global batch's.
- All processes start from rank 0's parameters and buffers (broadcast once, as DistributedDataParallel does) and
  apply the same summed gradient, so their weights stay identical. Validation is split by batches of 256 val
  points over the processes and the counts summed (:func:`all_sum`); each batch is attacked with the same seeded
  start as in one process, so every process gets the same numbers and selects the same epoch.

Why not torch's DistributedDataParallel: the adversarial trainers run the model many times per step (PGD computes
input gradients with ``torch.autograd.grad`` inside ``batch_loss``; TRADES, ARD and AdaAD add forwards of their
own), and DDP's reducer expects exactly one backward of the wrapped module per forward ("Expected to have finished
reduction in the prior iteration"). :func:`broadcast_module` and :func:`reduce_gradients` are DDP's arithmetic
(broadcast at the start, gradient average after backward) without its hooks, on every trainer alike.

What is and is not exact:

- ``standard``, ``kd`` and ``defensive-distillation`` have no randomness in the loss: two processes give one
  process's weights up to floating-point order (summation order of the gradient and of the losses).
- The randomness inside ``batch_loss`` (the attack's random start in ``pgd-at``, ``trades``, ``ard``, ``rslad``,
  ``adaad``) is drawn per shard, from a stream of each process's own (seeded from the seed, the epoch and the rank,
  so a run and its --resume agree): these are statistically, not bitwise, equivalent to one process.
- BatchNorm: on CUDA the model's BatchNorm layers become SyncBatchNorm while it trains, so batch statistics are the
  global batch's (a batch with fewer points than processes is then refused before training: every process must
  take part in each SyncBatchNorm forward). torch's SyncBatchNorm does not run on the CPU (torch 2.13: "expected
  input tensor to be on GPU"): there each process normalises with its shard's statistics, a one-time warning says
  so, and the running statistics are rank 0's, broadcast after every step (DDP's ``broadcast_buffers``). The
  digits architectures ``cnn-small`` and ``cnn-tiny`` have no BatchNorm.

Writes and display: only rank 0 checks and claims ``--out``, locks the ``<out>.partial`` work folder, saves its
``last.pt`` after each epoch (with every process's torch RNG state), writes the checkpoint with its provenance
(``"distributed": {"world_size": N, "backend": "gloo"}``, only when N > 1) and the training report, shows progress
and logs below WARNING; the others wait at each save. ``--resume`` works the same: every process loads ``last.pt``
and continues (with its own saved RNG state when the number of processes is the same). A refusal before training (a
bad recipe, a refused ``--out``, a method that is not data-parallel) stops every process with exit code 2 and is
printed once (:func:`agreement`); torchrun itself then exits 1. Called from Python under torchrun, ``Trainer.fit``
runs on every process and calls ``on_epoch_end`` on each with the same record. Other commands than ``train``
(audits, the demo) are refused under torchrun by the CLI: each process would run all of it.

Covered: every trainer on the shared epoch loop - ``standard``, ``kd``, ``pgd-at``, ``trades``, ``ard``,
``rslad``, ``adaad`` and ``defensive-distillation`` (its temperature teacher too), and a missing teacher they train
first. Refused under torchrun with a UserInputError (they train in one process): ``mtard`` and ``b-mtard`` (their
teacher balance is updated from each batch's losses inside ``batch_loss``), ``guard`` and ``sre2l`` (the recover
stage synthesises images in one process), ``proard`` (its own stage loop and BatchNorm recalibration), and the
language-model and diffusion trainers (``sft``, ``seq-kd``, ``logit-kd``, ``ddpm``, ``t2i``, ``sid``, ``sfd``,
``badt2i``, ``skd-cag``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

VAL_BATCH = 256  # validation is split over the processes in batches of this many points (the robust metric's batch)
COVERED = ("standard", "kd", "pgd-at", "trades", "ard", "rslad", "adaad", "defensive-distillation")


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes torchrun started (size 1: no torchrun)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    def shard(self, n: int) -> slice:
        """This process's contiguous part of a batch of ``n`` points: sizes differ by at most one, the first
        ``n % size`` processes take one more; empty for ranks ``n`` and above when ``n`` is below ``size``."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


ONE = World()


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise UserInputError(name, f"is {raw!r}, not a whole number", "start the run with torchrun, which sets it") from None


def world() -> World:
    """The world torchrun's environment describes; :data:`ONE` without torchrun or with one process."""
    if "WORLD_SIZE" not in os.environ:
        return ONE
    size = _env_int("WORLD_SIZE")
    if size <= 1:
        return ONE
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if not 0 <= rank < size:
        raise UserInputError("RANK", f"is {rank}, outside 0..{size - 1}", "start the run with torchrun, which sets it")
    return World(size, rank, local)


def launched() -> bool:
    """True in a process torchrun started with more than one process."""
    return world().size > 1


def is_rank0() -> bool:
    """True in the process that writes and reports (rank 0), and in every run without torchrun."""
    return world().rank == 0


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def group_backend() -> str:
    """The process group's backend: gloo for CPU tensors, plus nccl for CUDA tensors where torch has CUDA."""
    dist = _dist()
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def ensure_group() -> None:
    """Join torchrun's process group (once per process); lower the robustdistill logger to WARNING on every
    process but rank 0, so that log lines and progress are shown once."""
    dist = _dist()
    if not launched() or dist.is_initialized():
        return
    if not dist.is_available():
        raise UserInputError("torchrun", "this torch build has no torch.distributed", "train in one process")
    dist.init_process_group(backend=group_backend())
    atexit.register(_leave)
    if not is_rank0():
        package = logging.getLogger("robustdistill")
        package.setLevel(max(package.getEffectiveLevel(), logging.WARNING))


def _leave() -> None:
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


def leave() -> None:
    """At the end of a successful run: wait for every process, then leave the process group together (not one
    process tearing its connections down while another still works). Nothing without torchrun."""
    if active():
        barrier()
        _leave()


def active() -> bool:
    """True once this process has joined a group of more than one process."""
    return launched() and _dist().is_initialized()


def backend(device: torch.device) -> str:
    """The backend that carries tensors of ``device``: nccl for CUDA, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def provenance(device: torch.device) -> dict[str, Any]:
    """What provenance records of a data-parallel run; nothing for one process (its provenance is unchanged)."""
    if not launched():
        return {}
    return {"distributed": {"world_size": world().size, "backend": backend(device)}}


# --------------------------------------------------------------------------------------------------------------
# Joining a run and refusing what cannot run data-parallel


def check_supported(trainer: Any) -> None:
    """Refuse, under torchrun with more than one process, a trainer that trains in one process only (its class has
    no true ``data_parallel`` attribute): the language-model and diffusion trainers, MTARD, GUARD, ProARD."""
    if not launched() or getattr(trainer, "data_parallel", False):
        return
    method = getattr(trainer, "method", "") or type(trainer).__name__
    raise UserInputError("torchrun", f"{method} trains in one process: it is not data-parallel",
                         f"run it without torchrun (python -m robustdistill train {method} ...); data-parallel "
                         f"methods: {', '.join(COVERED)}")


def join(trainer: Any) -> None:
    """Before a trainer's run under torchrun: refuse a method that is not data-parallel, join the process group
    and move the trainer to this process's device (``cuda:LOCAL_RANK`` on CUDA). Nothing without torchrun."""
    check_supported(trainer)
    if not launched():
        return
    ensure_group()
    device = torch.device(trainer.device)
    if device.type == "cuda":
        local, count = world().local_rank, torch.cuda.device_count()
        if local >= count:
            raise UserInputError("--nproc_per_node", f"process {local} has no GPU of its own ({count} visible)",
                                 "start at most one process per GPU")
        if device.index not in (None, local):
            log.info("data-parallel run: process %d trains on cuda:%d, not %s", world().rank, local, device)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        if "nccl" not in group_backend():
            raise UserInputError("device", "CUDA training under torchrun needs nccl, which this torch lacks",
                                 "set device = 'cpu', or train in one process")
    elif device.type != "cpu":
        raise UserInputError("device", f"data-parallel training runs on cpu (gloo) or cuda (nccl), not {device}",
                             "set device = 'cpu' or 'cuda', or train in one process")
    trainer.device = device


class PeerFailed(UserInputError):
    """Another process of the run failed where this one did not; that process reports why."""

    reported_elsewhere = True

    def __init__(self, rank: int) -> None:
        super().__init__("torchrun", f"process {rank} of this run failed (its error is shown)", None)


@contextlib.contextmanager
def agreement() -> Iterator[None]:
    """A stretch of work after which every process of the run agrees whether it went well.

    Under torchrun the processes exchange one flag each when the block ends: if any raised, every process raises -
    its own error, or :class:`PeerFailed` - so that a refusal before training (a bad recipe, a refused --out) stops
    all of them instead of leaving the others waiting at the next collective. The error is printed once: by the
    lowest rank that raised it (the CLI skips errors marked ``reported_elsewhere``). Without torchrun it does
    nothing. Every process must enter the same agreements in the same order.
    """
    if not launched():
        yield
        return
    ensure_group()
    failure: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others know
        failure = exc
    here = world()
    flags = torch.zeros(here.size, dtype=torch.int32)
    if failure is not None:
        flags[here.rank] = 1
    _dist().all_reduce(flags)
    failed = [rank for rank in range(here.size) if int(flags[rank])]
    if failure is not None:
        if failed[0] != here.rank:
            failure.reported_elsewhere = True  # type: ignore[attr-defined]
        raise failure
    if failed:
        raise PeerFailed(failed[0])


def barrier() -> None:
    """Wait for every process of the run (nothing without torchrun): an all_reduce of a CPU tensor, so it goes over
    gloo whatever device the model trains on."""
    if active():
        _dist().all_reduce(torch.zeros(1))


# --------------------------------------------------------------------------------------------------------------
# Collectives of the epoch loop


def _by_dtype(tensors: Sequence[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.dtype, []).append(tensor)
    return groups


@torch.no_grad()
def _broadcast_from_rank0(tensors: Sequence[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every process, one broadcast of a flat buffer per dtype."""
    for group in _by_dtype(tensors).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        _dist().broadcast(flat, src=0)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_module(model: nn.Module) -> None:
    """Give every process rank 0's parameters and buffers, as DDP does at its start."""
    if active():
        _broadcast_from_rank0([*model.parameters(), *model.buffers()])


def _plain_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in model.modules())


def sync_buffers(model: nn.Module) -> None:
    """After a step, BatchNorm running statistics are rank 0's on every process (DDP's ``broadcast_buffers``);
    nothing for a model without (plain) BatchNorm."""
    if active() and _plain_batchnorm(model):
        _broadcast_from_rank0(list(model.buffers()))


def reduce_gradients(model: nn.Module, local: int, total: int, loss_sum: float, correct: int) -> tuple[float, int]:
    """Sum the gradients of every process, each scaled by ``local / total`` (its shard's share of the global
    batch), with one all_reduce of a flat buffer that also carries the shard's loss sum and correct count; returns
    the global batch's (loss sum, correct count). A parameter no process has a gradient for keeps none (as in one
    process, where the optimiser skips it); one only some have gets the sum (zeros for the others)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return loss_sum, correct
    dtype = params[0].grad.dtype if params[0].grad is not None else params[0].dtype
    device = params[0].device
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params]
    n = sum(part.numel() for part in parts)
    extra = torch.tensor([1.0 if p.grad is not None else 0.0 for p in params] + [loss_sum, float(correct)],
                         dtype=dtype, device=device)
    flat = torch.cat([*parts, extra])
    flat[:n].mul_(local / total)
    _dist().all_reduce(flat)
    tail = flat[n:].tolist()  # one read from the device: the flags, the loss sum, the correct count
    offset = 0
    for index, p in enumerate(params):
        count = p.numel()
        if tail[index] > 0:
            summed = flat[offset : offset + count].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)
        offset += count
    return float(tail[-2]), int(round(tail[-1]))


def all_sum(values: Sequence[float]) -> list[float]:
    """``values`` summed over the processes, in float64 (the same numbers on every process)."""
    if not active():
        return [float(v) for v in values]
    buffer = torch.tensor([float(v) for v in values], dtype=torch.float64)
    _dist().all_reduce(buffer)
    return [float(v) for v in buffer]


def rng_states() -> list[torch.Tensor] | None:
    """Every process's torch CPU RNG state, in rank order (for last.pt); None without torchrun."""
    if not active():
        return None
    state = torch.get_rng_state()
    gathered = [torch.empty_like(state) for _ in range(world().size)]
    _dist().all_gather(gathered, state)
    return gathered


# --------------------------------------------------------------------------------------------------------------
# The model


def prepare_model(model: nn.Module, device: torch.device, batch_size: int, n_train: int) -> nn.Module:
    """The model to train under torchrun: on CUDA its BatchNorm layers become SyncBatchNorm (same parameters and
    state-dict names), on the CPU a one-time warning says that each process normalises with its shard's
    statistics. Unchanged without torchrun or BatchNorm."""
    if not launched() or not _plain_batchnorm(model):
        return model
    if device.type == "cuda":
        short = n_train % batch_size
        if 0 < short < world().size:
            raise UserInputError("batch_size", f"the last batch of each epoch has {short} point(s), fewer than the "
                                 f"{world().size} processes, and SyncBatchNorm needs every process in each forward",
                                 "choose a batch size that leaves at least one point per process, or fewer processes")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if is_rank0():
        log.warning("data-parallel training on the CPU: torch's SyncBatchNorm needs a GPU, so each of the %d "
                    "processes normalises with the BatchNorm statistics of its shard of the batch (%d of %d points); "
                    "the running statistics are rank 0's", world().size, -(-batch_size // world().size), batch_size)
    return model
