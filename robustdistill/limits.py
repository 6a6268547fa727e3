"""Bounds on the numbers a user controls, checked before any work starts.

A suite, a recipe, an attack preset or a Python call can ask for eps = 1e308, a seed of 2**64, 10**9 PGD steps or
100000 threads. Each of these either crashes deep inside numpy/torch (a traceback, or a segfault for threads) or
runs for ever; these checks turn them into one :class:`UserInputError` naming the field, before anything loads.
Every bound is generous for real use and small enough that nothing downstream overflows.

Imports nothing of robustdistill's but ``errors``, so models, data, attacks and trainers can all use it.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError

# Seeds reach torch.manual_seed / torch.Generator.manual_seed (signed or unsigned 64-bit), np.random.default_rng
# (non-negative only) and random.seed: [0, 2**63 - 1] is accepted by every one of them.
MAX_SEED = 2**63 - 1
# Iterations of one attack (PGD, APGD, CW, FAB, ...): the papers use at most 10,000 (CW's reference code).
MAX_STEPS = 100_000
# Random restarts of one attack: AutoAttack's "rand" version uses 20, Square up to a few.
MAX_RESTARTS = 1_000
# Square's query budget (the paper's 5,000 ... 10,000, with room for 100x more).
MAX_QUERIES = 1_000_000
# Training epochs: the papers' longest schedules are 400 (GUARD's student) and 300 (MTARD); 10**9 only runs for ever.
MAX_EPOCHS = 100_000
# Learning rates: SGD on CIFAR uses 0.1, recover steps 0.25; anything over 10 only diverges.
MAX_LR = 10.0
# Images read from user datasets: checked from the file header before decoding. PIL's own limit (89.5M pixels)
# lets a single file take gigabytes; 4096 x 4096 covers every classifier input this package trains.
MAX_IMAGE_PIXELS = 4096 * 4096
# Parameters and buffers of one network: 2**31 float32 values are 8.6 GB, 46 times WRN-34-10.
MAX_PARAMETERS = 2**31
# The largest input the loaders produce (3 channels of MAX_IMAGE_PIXELS): its L2 diameter bounds any L2 eps.
MAX_INPUT_VALUES = 3 * MAX_IMAGE_PIXELS


def max_threads() -> int:
    """Four threads per CPU core the OS reports: more only thrashes, and torch's pools crash far above it."""
    return 4 * (os.cpu_count() or 1)


def _integer(field: str, value: Any) -> int:
    # bool is an int subclass; a float such as 10.0 is accepted, 10.5 is not.
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)):
        raise UserInputError(field, f"must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise UserInputError(field, f"must be an integer, got {value!r}")
    return int(value)


def check_int(field: str, value: Any, minimum: int, maximum: int, fix: str | None = None) -> int:
    """``value`` as an int in [minimum, maximum], or a UserInputError naming ``field``."""
    number = _integer(field, value)
    if not minimum <= number <= maximum:
        raise UserInputError(field, f"must be in [{minimum}, {maximum}], got {number}", fix)
    return number


def check_seed(field: str, value: Any) -> int:
    return check_int(field, value, 0, MAX_SEED, "use a seed in [0, 2**63 - 1], e.g. 0")


def check_steps(field: str, value: Any) -> int:
    return check_int(field, value, 1, MAX_STEPS, f"use at most {MAX_STEPS:,} iterations")


def check_epochs(field: str, value: Any) -> int:
    return check_int(field, value, 1, MAX_EPOCHS, f"use at most {MAX_EPOCHS:,} epochs")


def check_restarts(field: str, value: Any) -> int:
    return check_int(field, value, 1, MAX_RESTARTS, f"use at most {MAX_RESTARTS:,} restarts")


def check_threads(field: str, value: Any) -> int:
    return check_int(field, value, 1, max_threads(), f"this machine has {os.cpu_count() or 1} CPU cores")


def check_finite(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserInputError(field, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UserInputError(field, f"must be a finite number, got {number}")
    return number


def check_lr(field: str, value: Any) -> float:
    number = check_finite(field, value)
    if not 0 < number <= MAX_LR:
        raise UserInputError(field, f"must be in (0, {MAX_LR:g}], got {number:g}", "e.g. 0.1 for SGD, 0.001 for Adam")
    return number


def max_eps(norm: str, dims: int | None = None) -> float:
    """The largest meaningful radius: 1 in L-inf (inputs are in [0, 1]); the diameter sqrt(dims) of [0, 1]^dims in
    L2 (dims unknown: the largest input the loaders produce)."""
    if norm == "linf":
        return 1.0
    return math.sqrt(dims if dims is not None else MAX_INPUT_VALUES)


def check_eps(field: str, value: Any, norm: str, *, dims: int | None = None, allow_inf: bool = False) -> float:
    """A radius in [0, max_eps(norm, dims)]; ``allow_inf`` admits inf (minimum-norm attacks: no bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise UserInputError(field, f"must be a number, got {value!r}")
    number = float(value)
    if allow_inf and number == math.inf:
        return number
    limit = max_eps(norm, dims)
    if not 0 <= number <= limit:
        where = "inputs are in [0, 1]" if norm == "linf" else f"the diameter of [0, 1]^{dims}" if dims else "the largest input's diameter"
        example = "0.125" if norm == "linf" else "0.5"
        raise UserInputError(field, f"{norm} radius must be in [0, {limit:g}], got {number:g}", f"{where}; e.g. {example}")
    return number


# Suites, recipes and presets are a few kilobytes; a megabyte is already far more than any of them needs.
MAX_TEXT_BYTES = 1 << 20


def read_text(path: Path, field: str, what: str = "a TOML file") -> str:
    """A small UTF-8 text file (whatever the locale), or a UserInputError naming ``field``: never a decode
    traceback for a binary file, never reading a huge one into memory."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise UserInputError(field, f"{path} is {size:,} bytes, more than {what} can be ({MAX_TEXT_BYTES:,})",
                                 f"point at {what}")
        with path.open("rb") as handle:
            raw = handle.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise UserInputError(field, f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions") from None
    if len(raw) > MAX_TEXT_BYTES:  # a device or a file that grew while read
        raise UserInputError(field, f"{path} is more than {MAX_TEXT_BYTES:,} bytes", f"point at {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(field, f"{path} is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x})",
                             f"point at {what}") from None


def memory_budget() -> int:
    """Bytes a loaded dataset may take: half the machine's physical memory (8 GiB where the OS does not say), so a
    dataset too large for this loader is refused from its size before it is read, not by the OOM killer after."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
    return max(total // 2, 1 << 30)


def check_dataset_size(field: str, images: int, shape: tuple[int, ...], itemsize: int, fix: str) -> None:
    """Refuse ``images`` decoded images of ``shape`` (each value ``itemsize`` bytes) beyond :func:`memory_budget`."""
    needed = images * math.prod(shape) * itemsize
    budget = memory_budget()
    if needed > budget:
        raise UserInputError(field, f"{images:,} images of shape {shape} need {needed / 2**30:.1f} GiB in memory, more "
                             f"than this loader's budget of {budget / 2**30:.1f} GiB (half the machine's memory)", fix)
