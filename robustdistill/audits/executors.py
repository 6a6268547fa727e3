"""Where an audit's probe units run: here, one after another (the default), or as Ray tasks (``--executor ray``: a
local Ray instance, or the cluster at ``--address``).

A Ray task gets the audit's *job* (the driver's working directory, the validated suite, the models given in memory
as Ray objects, the load options, the run's artifacts folder) and one unit's key. Its worker prepares the audit exactly as
the driver did (runner.prepare: the same loaders, checks and plan), once per worker process and audit, and runs the
unit; the record comes back to the driver, which alone appends it to the run store. So the store, its keys and
--resume are the same whichever executor ran the units, and a unit's numbers do not depend on where it ran: every
unit seeds itself (runner._run_unit) and the workers run torch on one thread, as the audit does by default.

A worker process that dies (killed, out of memory, its node lost) takes its running task with it; Ray runs that task
again, up to ``retries`` times, and its record is stored once, when a run of it finishes. A probe that raises (bad
input, a bug) is not retried: the audit stops with that error after storing every unit finished so far, and
--resume continues it.

On a cluster, the checkpoints, the data, --out and the driver's working directory (relative paths in a suite resolve
against it) must be at the same paths on every node (a shared filesystem), and robustdistill installed in the
workers' Python. A worker that finds other checkpoints at those paths plans
other unit keys and says so instead of running them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

SEQUENTIAL, RAY = "sequential", "ray"
EXECUTORS = (SEQUENTIAL, RAY)
RETRIES = 3  # runs of a unit whose worker died, after the first (Ray's default for tasks)
SHARED_FILES = "put the checkpoints, data and --out on a filesystem every node sees at the same paths"
INSTALL = "pip install -c constraints.txt -e '.[ray]' (the ray extra)"


@dataclass(frozen=True)
class AuditJob:
    """What a worker needs to prepare an audit and run its units; ``token`` names it in the workers' caches."""

    cwd: str  # the driver's working directory: relative paths in the suite and its probes resolve against it
    suite: Any
    modules: dict[str, Any]  # role -> Ray object of a model given in memory
    load_options: dict[str, dict[str, Any]] | None
    artifacts: str
    token: str


# --------------------------------------------------------------------------------------------------------------
# The worker's side


_PREPARED: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()  # token -> (context, units by key)
_PREPARED_LOCK = threading.Lock()
KEEP_PREPARED = 2  # audits whose models and data a worker keeps between tasks (a sweep interleaves its audits)


def run_unit_task(job: AuditJob, key: str) -> dict[str, Any]:
    """One unit of ``job``, in a Ray worker: its record for the driver's run store."""
    from robustdistill.audits import runner

    if not Path(job.cwd).is_dir():
        raise UserInputError("--executor", f"a Ray worker has no folder {job.cwd} (the audit's working directory)",
                             SHARED_FILES)
    os.chdir(job.cwd)  # a worker process runs only Ray tasks; each of ours works where its audit's driver works
    ctx, units = _prepared(job)
    unit = units.get(key)
    if unit is None:
        raise UserInputError("--executor", f"a Ray worker planned other units than this audit (no unit {key}): the "
                             "checkpoints or data at the audit's paths differ on its node",
                             SHARED_FILES)
    return runner._run_unit(job.suite, unit, ctx)


def _prepared(job: AuditJob) -> tuple[Any, dict[str, Any]]:
    from robustdistill.audits import runner
    from robustdistill.threads import apply_thread_default

    with _PREPARED_LOCK:
        if job.token in _PREPARED:
            _PREPARED.move_to_end(job.token)
            return _PREPARED[job.token]
        apply_thread_default(None)  # robustdistill's default, as in the driver: one thread unless the environment says
        import ray

        modules = {role: ray.get(ref) for role, ref in job.modules.items()}
        prepared = runner.prepare(job.suite, modules, job.load_options)
        entry = (prepared.context(job.suite, Path(job.artifacts)), {u.key: u for u in prepared.units})
        _PREPARED[job.token] = entry
        while len(_PREPARED) > KEEP_PREPARED:
            _PREPARED.popitem(last=False)
        return entry


# --------------------------------------------------------------------------------------------------------------
# The driver's side


def make_executor(name: str | None, address: str | None = None) -> RayExecutor | None:
    """The executor ``--executor NAME`` asks for (None: the units run here, one after another)."""
    if name in (None, SEQUENTIAL):
        if address is not None:
            raise UserInputError("--address", "is only for --executor ray", "add --executor ray, or drop --address")
        return None
    if name != RAY:
        raise UserInputError("--executor", f"unknown executor {name!r}", f"use one of {', '.join(EXECUTORS)}")
    return RayExecutor(address)


class RayExecutor:
    """Runs audit units as Ray tasks. Use it as a context manager: it starts a local Ray instance (or connects to
    ``address``) on entry, unless Ray is already running in this process, and shuts down only what it started.
    One executor may serve several audits at once (a sweep runs its audits in threads)."""

    name = RAY

    def __init__(self, address: str | None = None, retries: int = RETRIES) -> None:
        if retries < 0:
            raise UserInputError("retries", f"must be >= 0, got {retries}", "use 0 (never rerun a lost unit) or more")
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise UserInputError("--executor", "ray is not installed", f"{INSTALL}, or leave --executor out to run "
                                 "the units here, one after another (same results)")
        if address is not None:
            check_reachable(address)
        self.address, self.retries = address, retries
        self._started = False
        self._entered = 0
        self._lock = threading.Lock()
        self._running: set[Any] = set()
        self._stopped = False  # cancel_all() was called: run() starts nothing more

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address or "local", "retries": self.retries}

    def __enter__(self) -> RayExecutor:
        import ray

        with self._lock:
            self._entered += 1
            if self._entered == 1:
                self._stopped = False
            if ray.is_initialized():
                return self
            options = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            try:
                ray.init(address=self.address, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                self._entered -= 1
                where = self.address or "a local Ray instance"
                raise UserInputError("--address", f"cannot start or reach {where}: {exc}".splitlines()[0],
                                     "check the address (HOST:6379, as `ray start --head` printed, or auto), "
                                     "or leave --address out for a local instance") from None
            self._started = True
            log.info("Ray: %s, %s CPUs", "connected to " + self.address if self.address else "local instance",
                     int(ray.cluster_resources().get("CPU", 0)))
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        with self._lock:
            self._entered -= 1
            if self._entered == 0 and self._started:
                ray.shutdown()
                self._started = False

    def job(self, suite: Any, modules: Mapping[str, Any], load_options: Any, artifacts: Path,
            units: list[Any]) -> tuple[Any, int]:
        """The audit's job, put in Ray's object store once (each task gets a reference), and the GPUs each of its
        tasks asks for (one when the audit runs on CUDA)."""
        import ray

        from robustdistill.utils import resolve_device

        keys = sorted(u.key for u in units)
        token = hashlib.sha256(json.dumps([keys, os.getcwd(), str(artifacts.resolve()), repr(load_options)]).encode()
                               ).hexdigest()
        job = AuditJob(os.getcwd(), suite, {role: ray.put(m) for role, m in modules.items()},
                       {k: dict(v) for k, v in (load_options or {}).items()} or None, str(artifacts.resolve()), token)
        return ray.put(job), int(resolve_device(suite.device).type == "cuda")

    def run(self, job: tuple[Any, int], units: list[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Submit every unit (the most expensive first, so none starts last) and yield (unit, record) as each
        finishes. On an error, or when the caller stops early, the tasks still running are cancelled."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        if not units:
            return
        job_ref, gpus = job
        if self._stopped:
            raise RuntimeError("the sweep was stopped: no more units are started")
        remote = ray.remote(run_unit_task).options(max_retries=self.retries, retry_exceptions=False, num_cpus=1,
                                                   num_gpus=gpus, name="robustdistill-unit")
        ordered = sorted(units, key=lambda u: -float(u.probe.expected_cost()))
        pending = {remote.remote(job_ref, unit.key): unit for unit in ordered}
        with self._lock:
            self._running |= set(pending)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                unit = pending.pop(ref)
                with self._lock:
                    self._running.discard(ref)
                try:
                    record = ray.get(ref)
                except RayTaskError as exc:  # the probe raised: its own error, as the sequential run raises it
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                except RayError as exc:  # the worker died more often than retries allow, or its node was lost
                    raise RuntimeError(f"unit {unit.probe.name} on {'+'.join(unit.roles)} was lost after "
                                       f"{self.retries + 1} runs: {exc}".splitlines()[0] + "; the units finished "
                                       "are stored, and --resume continues the audit") from None
                yield unit, record
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            with self._lock:
                self._running -= set(pending)

    def cancel_all(self) -> None:
        """Cancel every task this executor is running (a sweep stopped by Ctrl-C)."""
        import ray

        with self._lock:
            running, self._running, self._stopped = list(self._running), set(), True
        for ref in running:
            ray.cancel(ref, force=True)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse an address nothing answers at before any work: Ray itself retries an unreachable cluster for minutes."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError("--address", f"{address!r} is not HOST:PORT", "use HOST:6379 (as `ray start --head` "
                             "printed), or auto for a cluster started on this machine")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserInputError("--address", f"nothing answers at {address} ({exc.strerror or exc})",
                             "start the cluster (`ray start --head`), check the address, or leave --address out for "
                             "a local instance") from None

