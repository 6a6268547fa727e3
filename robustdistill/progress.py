"""Progress of long runs (audits, training): a bar over weighted work, readable logs, no silent minutes.

- :class:`WorkProgress` counts *work*, not units: an AutoAttack unit costs hundreds of clean ones, so an ETA that
  counted units as equal was wrong by minutes. On a terminal it is a tqdm bar; without one (CI, ``| tee``, a log
  file) it logs a line per finished unit with elapsed time and ETA, and a heartbeat every ``HEARTBEAT_S`` seconds
  while a long unit runs.
- What one unit costs is the probe's to say (``Probe.expected_cost()``, robustdistill.audits.probes): this module
  knows nothing of attacks or model families.
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
from collections.abc import Iterator
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
        self.finished(label, cost)

    def finished(self, label: str, cost: float) -> None:
        """Count a unit of ``cost`` work that ran elsewhere (a Ray task) as finished now."""
        self.done += cost
        self.done_units += 1
        self.bar.update(cost)
        if self.text:
            self._line(f"{self.desc}: {label} done; {self._status()}")

    def advance(self, work: float, postfix: str | None = None) -> None:
        """Count ``work`` done inside the running unit (a training epoch's batches, as they finish), so the bar and
        the ETA move before the unit ends; ``postfix`` replaces the bar's status text."""
        self.done += work
        if postfix is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(work)

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
