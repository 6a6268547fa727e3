"""Progress of long runs (audits, training): a bar over weighted work, readable logs, no silent minutes.

- :class:`WorkProgress` counts *work*, not units: an AutoAttack unit costs hundreds of clean ones, so an ETA that
  counted units as equal was wrong by minutes. On a terminal it is a tqdm bar; without one (CI, ``| tee``, a log
  file) it logs a line per finished unit with elapsed time and ETA, and a heartbeat every ``HEARTBEAT_S`` seconds
  while a long unit runs.
- :func:`estimate_cost` is a unit's expected work in gradient steps on the evaluation points, from the probe's
  kind and params (or the probe's own ``expected_cost()`` when it declares one).
- :func:`labelled` prefixes every robustdistill log line emitted inside it with a label such as
  ``[autoattack on teacher]``: attacks log their progress without knowing which model they attack.
- :func:`logs_above_bars` routes the ``robustdistill`` logger through tqdm, so an INFO line never lands on the
  progress bar's line.

Imports nothing of robustdistill's: the runner, the trainers and the CLI all use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0  # longest silence without a terminal while a unit runs
_PACKAGE = "robustdistill"

# --------------------------------------------------------------------------------------------------------------
# Log lines that say which unit they belong to

_label: contextvars.ContextVar[str | None] = contextvars.ContextVar("robustdistill_log_label", default=None)
_factory_installed = False
_factory_lock = threading.Lock()


def _install_record_factory() -> None:
    """Wrap the log-record factory once: records of robustdistill loggers made inside :func:`labelled` get the
    label in front of their message, whatever handler or formatter prints them (the CLI's, basicConfig, a
    notebook's). A record factory, not a filter: a logger's filters do not see records of its child loggers."""
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            label = _label.get()
            if label and isinstance(record.msg, str) and record.name.startswith(_PACKAGE):
                record.msg = f"[{label}] {record.msg}"
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Prefix robustdistill's log lines made in this block (this thread) with ``[label]``."""
    _install_record_factory()
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


@contextlib.contextmanager
def logs_above_bars(logger: str = _PACKAGE) -> Iterator[None]:
    """Print ``logger``'s lines through tqdm (above any bar, never onto its line) inside this block."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger(logger)]):
        yield


# --------------------------------------------------------------------------------------------------------------
# Expected work of one audit unit, in gradient steps on the evaluation points (a forward pass is about a third)

# Measured on digits (cnn-small, 359 points): clean 0.03 s, FGSM 0.09 s, PGD-20 1.0 s, AutoAttack 35 s, masking
# 17 s. AutoAttack's later stages run only on the points still robust: guessed at this fraction.
_STILL_ROBUST = 0.2
_FORWARD = 1 / 3
_SHADOW_STEPS = 40.0  # one LiRA shadow model trained on digits: about 2 s, forty PGD steps' worth


def attack_cost(params: Mapping[str, Any]) -> float:
    """Expected gradient steps of one attack run from its params (as ``AttackSpec.describe()`` gives them)."""
    name = str(params.get("attack", "pgd"))
    steps = float(params.get("steps") or 0)
    restarts = float(params.get("restarts") or 1)
    queries = float(params.get("n_queries") or params.get("queries") or 0)
    targets = float(params.get("n_target_classes") or 9)
    if name == "fgsm":
        return 1.0 + _FORWARD
    if name == "autoattack":
        steps = steps or 100
        later = 2 * targets * steps + (queries or 5000) * _FORWARD  # APGD-T, FAB-T, Square on what is left
        return steps + _STILL_ROBUST * later
    if name == "square":
        return (queries or 5000) * _FORWARD * restarts
    if name in ("apgd-t", "fab-t"):
        return (steps or 100) * targets * restarts
    if name == "cw-l2":
        return (steps or 1000) * float(params.get("binary_steps") or 9)
    return (steps or 20) * restarts + _FORWARD


def estimate_cost(kind: str, params: Mapping[str, Any], declared: Callable[[], float] | None = None) -> float:
    """Expected work of one unit of a probe ``kind`` with ``params``; ``declared``, a probe's own estimate, wins."""
    if declared is not None:
        return max(float(declared()), 0.01)
    if kind in ("attack", "transfer", "agreement"):
        return attack_cost(params) * (2 if kind != "attack" else 1)  # pairs attack one model, evaluate both
    if kind == "curve":
        return attack_cost(params) * max(len(params.get("eps") or [1]), 1)
    if kind == "masking":
        steps, more, restarts = (float(params.get(k) or d) for k, d in (("steps", 10), ("more_steps", 100), ("restarts", 5)))
        scales = len(params.get("scales") or [0.01, 100.0])
        return steps * (3 + scales) + more + restarts * steps + float(params.get("square_queries") or 1000) * _FORWARD
    if kind == "mia-lira":
        return float(params.get("shadows") or 16) * _SHADOW_STEPS
    return 1.0  # clean, size, the loss and confidence attacks: about one pass over the points


# --------------------------------------------------------------------------------------------------------------
# The progress display


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class WorkProgress:
    """Progress over ``units`` weighted by expected work (``total`` of it, ``done`` already finished on resume).

    ``enabled``: True a bar, False nothing at all, None a bar on a terminal and log lines without one (a line per
    finished unit with elapsed time and ETA, and a heartbeat at least every ``heartbeat_s`` seconds of a unit).
    Use :meth:`unit` around each unit's work, and close it (or use it as a context manager).
    """

    def __init__(self, desc: str, total: float, units: int, *, done: float = 0.0, done_units: int = 0,
                 enabled: bool | None = None, heartbeat_s: float = HEARTBEAT_S,
                 logger: logging.Logger | None = None, unit_name: str = "units") -> None:
        from tqdm.auto import tqdm

        self.desc, self.total, self.units, self.unit_name = desc, max(float(total), 1e-9), units, unit_name
        self.done, self.done_units, self._start_done = float(done), done_units, float(done)
        self.heartbeat_s = heartbeat_s
        self.log = logger or log
        self.bar = tqdm(total=self.total, initial=self.done, desc=desc, leave=False,
                        disable=None if enabled is None else not enabled, smoothing=0,  # the run's mean rate
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self.text = enabled is None and self.bar.disable  # no terminal: lines in the log instead of a bar
        self.started = time.perf_counter()
        self._current: tuple[str, float, float] | None = None  # (label, started, cost) of the unit running now
        self._last_line = self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if self.text:
            self._beat = threading.Thread(target=self._heartbeat, name="robustdistill-progress", daemon=True)
            self._beat.start()

    def __enter__(self) -> WorkProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eta(self) -> float | None:
        """Seconds left at this run's rate of work so far (None before any work is done). A running unit counts
        as done in proportion to its time so far against its expected time (at most 90%): otherwise the ETA would
        climb for as long as a long unit runs."""
        now = time.perf_counter()
        worked = self.done - self._start_done
        if worked <= 0:
            return None
        elapsed = now - self.started
        with self._lock:
            current = self._current
        if current is not None:
            _, since, cost = current
            expected = cost * (since - self.started) / worked  # at the rate of the finished units
            worked += cost * min((now - since) / expected, 0.9) if expected > 0 else 0.0
        return elapsed / worked * max(self.total - self._start_done - worked, 0.0)

    def _status(self) -> str:
        eta = self.eta()
        return (f"{self.done_units}/{self.units} {self.unit_name}, {100 * self.done / self.total:.0f}% of the work, "
                f"{_clock(time.perf_counter() - self.started)} elapsed, ETA {'?' if eta is None else _clock(eta)}")

    @contextlib.contextmanager
    def unit(self, label: str, cost: float) -> Iterator[None]:
        """One unit of ``cost`` work: shown while it runs, its log lines labelled, counted when it finishes."""
        with self._lock:
            self._current = (label, time.perf_counter(), cost)
        # A label that counts itself ("epoch 2/3") needs no "1/3" before it.
        shown = label if f"/{self.units}" in label else f"{self.done_units}/{self.units} {label}"
        self.bar.set_postfix_str(shown, refresh=True)
        try:
            with labelled(label):
                yield
        finally:
            with self._lock:
                self._current = None
        self.done += cost
        self.done_units += 1
        self.bar.update(cost)
        if self.text:
            self._line(f"{self.desc}: {label} done; {self._status()}")

    def _line(self, message: str) -> None:
        with self._lock:
            self._last_line = time.perf_counter()
        self.log.info("%s", message)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_s)):
            with self._lock:
                current, quiet = self._current, time.perf_counter() - self._last_line
            if current is not None and quiet >= self.heartbeat_s:
                label, since, _ = current
                self._line(f"{self.desc}: still running {label} ({_clock(time.perf_counter() - since)}); {self._status()}")

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.bar.close()
