"""Statistics for audit rows and attack metrics: Wilson intervals, paired comparisons of per-point results, bit
packing. It imports nothing of robustdistill, so attacks, audits and reports can all use it.

Every accuracy in a report carries a 95% Wilson score interval (Wilson 1927; recommended over the normal
approximation by Brown, Cai and DasGupta 2001 because it stays inside [0, 1] and behaves at 0 and 1).
"""

from __future__ import annotations

import base64
import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """95% Wilson score interval for ``successes`` out of ``n``; None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp and make sure the point estimate is inside (rounding at p = 0 or 1).
    return [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))]


def proportion_row(mask: np.ndarray) -> tuple[float | None, list[float] | None, int]:
    """(value, ci95, n) of the fraction of True in a boolean array."""
    n = int(mask.size)
    k = int(mask.sum())
    return (k / n if n else None), wilson(k, n), n


def paired_excess(worse: np.ndarray, better: np.ndarray, *, tolerance: float, z: float = 2.0) -> tuple[bool, float, int]:
    """Is accuracy under ``worse`` higher than under ``better`` by more than noise and ``tolerance``?

    Both are per-point "still correct" masks over the same points. The difference of paired proportions is
    judged on its discordant points (McNemar): it counts when it exceeds ``tolerance`` and ``z`` standard errors.
    Returns (exceeds, difference, number of discordant points).
    """
    n = int(worse.size)
    if n == 0:
        return False, 0.0, 0
    only_worse = int((worse & ~better).sum())
    only_better = int((better & ~worse).sum())
    diff = (only_worse - only_better) / n
    noise = z * math.sqrt(only_worse + only_better) / n
    return diff > max(tolerance, noise), diff, only_worse + only_better


def bootstrap_ratio_ci(numer: np.ndarray, denom: np.ndarray, *, seed: int, resamples: int = 1000) -> list[float] | None:
    """Paired percentile-bootstrap 95% interval of mean(numer) / mean(denom) over the same points."""
    n = int(numer.size)
    if n == 0 or not denom.any():
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    num = numer[idx].mean(axis=1)
    den = denom[idx].mean(axis=1)
    ok = den > 0
    if not ok.any():
        return None
    ratios = num[ok] / den[ok]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    point = float(numer.mean() / denom.mean())
    return [float(min(lo, point)), float(max(hi, point))]


def pack_mask(mask: np.ndarray) -> str:
    """A boolean vector as base64 of its packed bits (compact in results.jsonl)."""
    return base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode("ascii")


def unpack_mask(text: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    return bits[:n].astype(bool)
