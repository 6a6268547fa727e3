"""Statistics for audit rows and attack metrics: Wilson intervals, paired comparisons of per-point results, bit
packing. It imports nothing of robustdistill, so attacks, audits and reports can all use it.

Every accuracy in a report carries a 95% Wilson score interval (Wilson 1927; recommended over the normal
approximation by Brown, Cai and DasGupta 2001 because it stays inside [0, 1] and behaves at 0 and 1).
"""

from __future__ import annotations

import base64
import math
import warnings

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


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples; Heusel et al. 2017, FID):
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    The product of two covariance matrices is not symmetric, and with fewer samples than dimensions it is singular:
    its square root then comes back from scipy with non-finite entries, or complex with round-off imaginary parts
    (eigenvalues a hair below zero). A non-finite root is retried with a small ridge on both diagonals; the real part
    of the root is used; the result is clipped at 0, which round-off can cross when the two sets are the same.
    """
    from scipy import linalg

    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, d) feature sets of the same width, got {a.shape} and {b.shape}")
    mean_gap = a.mean(axis=0) - b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # a singular product is expected (dead ReLU features): handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            ridge = 1e-6 * np.eye(len(cov_a))
            root = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    trace = float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(root)))
    return max(0.0, float(mean_gap @ mean_gap) + trace)


def frechet_bootstrap_ci(features_a: np.ndarray, features_b: np.ndarray, *, seed: int,
                         resamples: int = 200) -> list[float]:
    """Percentile-bootstrap 95% interval of :func:`frechet_distance`, each set resampled on its own (they are
    independent samples). The interval is widened to hold the point estimate, as a small-sample bias can move
    every resample's distance past it."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(features_a), np.asarray(features_b)
    draws = [frechet_distance(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
             for _ in range(resamples)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    point = frechet_distance(a, b)
    return [float(min(lo, point)), float(max(hi, point))]
