"""The CPU thread default shared by the command line and the Python entry points (``audit()``, ``Trainer.fit``).

torch starts with one thread per physical core. For the small models this package trains and audits, that is
slower than one thread, and up to 10x slower on a busy machine (an audit took 196 s from Python against 50 s from
the CLI, which used one thread). So robustdistill uses one thread unless the user chose a number themselves:

1. an explicit ``threads`` argument (``--threads N`` on the command line, ``threads=N`` in Python);
2. ``$ROBUSTDISTILL_THREADS``;
3. ``$OMP_NUM_THREADS`` (torch read it as it loaded: it is left as it is);
4. a ``torch.set_num_threads(n)`` call made after robustdistill applied its default (kept, not undone).

Resolving the number imports no torch, so the CLI can refuse a bad value before anything heavy loads.
"""

from __future__ import annotations

import logging
import os

from robustdistill.errors import UserInputError
from robustdistill.limits import check_threads

log = logging.getLogger(__name__)

ENV_VAR = "ROBUSTDISTILL_THREADS"
DEFAULT_THREADS = 1

# What this module last gave torch.set_num_threads: if torch reports something else later, the user changed it.
_applied: int | None = None


def requested(threads: int | str | None = None, *, field: str = "threads") -> int | None:
    """The thread count the user asked for (argument, then $ROBUSTDISTILL_THREADS), checked; None when neither is
    set. A bad value is one UserInputError naming where it came from, not a traceback or a torch crash."""
    if threads is None:
        raw = os.environ.get(ENV_VAR)
        if raw is None or not raw.strip():
            return None
        field, threads = ENV_VAR, raw
    if isinstance(threads, str):
        try:
            threads = int(threads.strip())
        except ValueError:
            raise UserInputError(field, f"{threads!r} is not a whole number", "e.g. 1") from None
    return check_threads(field, threads)


def resolve(threads: int | str | None = None, *, field: str = "threads") -> int | None:
    """The number to give torch: what the user asked for, else the default; None to leave torch alone (the user set
    $OMP_NUM_THREADS, or robustdistill already applied a count in this process, which a later torch.set_num_threads
    may have changed)."""
    asked = requested(threads, field=field)
    if asked is not None:
        return asked
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    if _applied is not None:
        # robustdistill chose already in this process (the CLI's --threads N, an earlier audit or training), or
        # the user changed it since: a later default must not undo either.
        return None
    return DEFAULT_THREADS


def apply_thread_default(threads: int | str | None = None, *, field: str = "threads") -> int:
    """Set torch's intra-op threads per :func:`resolve` and return the number torch now uses."""
    global _applied
    number = resolve(threads, field=field)
    import torch

    if number is not None:
        torch.set_num_threads(number)
        _applied = number
        log.debug("torch threads: %d", number)
    return torch.get_num_threads()
