"""Reproducible CPU numerics: pin the instruction set of torch's, oneDNN's and MKL's kernels.

The same code and seed give different numbers on x86 CPUs with different vector units (AVX2, AVX-512): torch,
oneDNN and MKL pick their kernels from the CPU at start-up, and summation orders (so rounding) differ between
kernels. On tiny trainings these last-bit differences grow into different models. Pinning makes every x86-64 CPU
with AVX2 take the same kernels:

- ``ATEN_CPU_CAPABILITY=avx2``: torch's own kernels (observable: ``torch.backends.cpu.get_cpu_capability()``);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN, which runs convolutions, pooling and the traced graphs' ops (observable:
  the implementation names in ``ONEDNN_VERBOSE=1`` output, ``jit:avx2`` instead of ``jit:avx512_core``);
- ``MKL_CBWR=COMPATIBLE``: MKL, which runs matrix products (``nn.Linear``). COMPATIBLE is MKL's only
  conditional-numerical-reproducibility branch honoured on non-Intel CPUs: on an AMD EPYC, ``MKL_CBWR=AVX2`` reads
  back as AUTO and changes nothing (observable: ``mkl_serv_cbwr_get`` from torch's library).

All three are read once, when torch loads its libraries, so they must be in the environment before torch is
imported: :func:`pin` sets them and refuses when torch was already imported with other kernels. The cost is the
AVX-512 speed-up on CPUs that have it and MKL's vectorised matrix products (see the README, "Reproducibility").
Not covered: GPUs, ARM CPUs, x86 CPUs without AVX2, other versions of torch.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

ENV_VAR = "ROBUSTDISTILL_REPRODUCIBLE"
PINNED_ENV: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
PINNED_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports when the pin took effect

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``$ROBUSTDISTILL_REPRODUCIBLE`` asks for pinned kernels (1/true/yes/on; unset, 0/false/no/off: not)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserInputError(ENV_VAR, f"{value!r} is not a yes/no value", "set it to 1 (pinned kernels) or 0")


def env_is_pinned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment carries every pinning variable with its pinned value."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name) == value for name, value in PINNED_ENV.items())


def pin() -> None:
    """Pin the CPU kernels for this process (and the processes it starts). Call before ``import torch``.

    Idempotent. When torch is already imported, succeeds only if it was imported with the pinned environment
    (e.g. set by a parent process); otherwise raises a UserInputError, since the kernels can no longer change.
    """
    if "torch" in sys.modules:
        # Pinned before torch loaded (here or by a parent process); a CPU that cannot run AVX2 kernels is recorded
        # as unpinned by cpu_record(), not refused: the tests and the demo still run there.
        if env_is_pinned() and (cpu_capability() in (PINNED_CAPABILITY, None) or not _supports_pinned_kernels()):
            return
        raise UserInputError(
            "reproducibility", f"torch was imported before pinning (CPU capability {cpu_capability()})",
            "call robustdistill.reproducibility.pin() before anything imports torch, or set "
            + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items()) + " in the environment")
    for name, value in PINNED_ENV.items():
        if os.environ.get(name, value) != value:
            log.info("reproducible mode: %s=%s replaced by %s", name, os.environ[name], value)
        os.environ[name] = value


def _supports_pinned_kernels() -> bool:
    """Whether this CPU can run the pinned (AVX2) kernels at all: an x86-64 CPU with AVX2."""
    import torch

    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return False
    check = getattr(torch.cpu, "_is_avx2_supported", None)  # private in torch 2.x; assume yes where it is missing
    return bool(check()) if callable(check) else True


def cpu_capability() -> str | None:
    """torch's CPU kernel level (e.g. AVX2, AVX512), or None when torch cannot say."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def is_pinned() -> bool:
    """Whether this process runs the pinned kernels: the environment was pinned before torch loaded, and torch
    really runs AVX2 kernels (an x86 CPU without AVX2, or an ARM CPU, cannot be pinned to them)."""
    return env_is_pinned() and cpu_capability() == PINNED_CAPABILITY


def kernels_key() -> str:
    """Names the kernels this process runs, for cache keys: 'pinned-AVX2', or e.g. 'native-AVX512'."""
    return f"{'pinned' if is_pinned() else 'native'}-{cpu_capability()}"


def cpu_record() -> dict[str, Any]:
    """What a manifest or a checkpoint's provenance records about the kernels that produced it."""
    pinned = is_pinned()
    if env_is_pinned() and not pinned:
        log.warning("reproducible mode asked for, but this CPU runs %s kernels, not %s: numbers may differ from "
                    "other machines'", cpu_capability(), PINNED_CAPABILITY)
    return {"capability": cpu_capability(), "pinned": pinned, "machine": platform.machine()}
