"""The likelihood-ratio attack (Carlini, Chien, Nasr, Song, Terzis and Tramer, "Membership Inference Attacks From
First Principles", IEEE S&P 2022), on scores already computed for the target and the shadow models.

For each point and each query view, the LiRA scores phi of the shadow models trained WITH the point (IN) and
WITHOUT it (OUT) are modelled as Gaussians. Online: the membership score is log N(phi; mu_in, s_in^2) -
log N(phi; mu_out, s_out^2), the log likelihood ratio. Offline (OUT shadows only): the one-sided test of the paper,
log Pr[Z < phi] with Z ~ N(mu_out, s_out^2) - a target score above what non-members reach means "member". Both are
averaged over the query views, as the paper averages over augmentations.

Means are the paper's means (the official code uses medians). With few shadow models per-point variances are too
noisy and the paper uses one global variance: here the pooled within-point variance (the official code pools the raw
IN scores, which adds the spread of the per-point means on top; we keep the paper's per-point Gaussians and pool
only their variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

MIN_STD = 1e-6  # a floor for points whose score is identical in every shadow model
PER_POINT_MIN_SHADOWS = 64  # below this, "auto" uses the global variance (Carlini et al. 2022, figure 6)


@dataclass(frozen=True)
class GaussianFit:
    mean_in: np.ndarray  # (N, Q); NaN where a point has no IN shadow
    std_in: np.ndarray
    mean_out: np.ndarray
    std_out: np.ndarray
    n_in: np.ndarray  # (N,) shadows holding each point
    n_out: np.ndarray
    fixed_variance: bool


def _moments(scores: np.ndarray, mask: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point mean and std over the shadows where ``mask`` is True; scores (S, N, Q), mask (S, N)."""
    weight = mask[:, :, None].astype(np.float64)
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (scores * weight).sum(0) / count[:, None]
        residual = ((scores - mean[None]) ** 2) * weight
        if fixed_variance:
            pooled = residual.sum((0, 1)) / max(1, int(count.sum()) - int((count > 0).sum()))
            std = np.broadcast_to(np.sqrt(pooled)[None, :], mean.shape).copy()
        else:
            std = np.sqrt(residual.sum(0) / np.maximum(count - 1, 1)[:, None])
    return mean, np.maximum(np.nan_to_num(std, nan=MIN_STD), MIN_STD), count


def fit_gaussians(shadow_scores: np.ndarray, shadow_in: np.ndarray, fixed_variance: bool) -> GaussianFit:
    """Fit IN and OUT Gaussians per point and view; shadow_scores (S, N, Q), shadow_in (S, N) bool."""
    scores = np.asarray(shadow_scores, dtype=np.float64)
    held = np.asarray(shadow_in, dtype=bool)
    if scores.ndim != 3 or held.shape != scores.shape[:2]:
        raise ValueError(f"shadow scores {scores.shape} and membership {held.shape} do not match")
    mean_in, std_in, n_in = _moments(scores, held, fixed_variance)
    mean_out, std_out, n_out = _moments(scores, ~held, fixed_variance)
    return GaussianFit(mean_in, std_in, mean_out, std_out, n_in, n_out, fixed_variance)


def online_scores(target: np.ndarray, fit: GaussianFit) -> np.ndarray:
    """(N,) log likelihood ratio IN vs OUT, averaged over views; target scores (N, Q)."""
    if (fit.n_in < 1).any() or (fit.n_out < 1).any():
        raise ValueError("online LiRA needs at least one IN and one OUT shadow model for every point")
    log_in = norm.logpdf(target, fit.mean_in, fit.std_in)
    log_out = norm.logpdf(target, fit.mean_out, fit.std_out)
    return (log_in - log_out).mean(axis=1)


def offline_scores(target: np.ndarray, fit: GaussianFit) -> np.ndarray:
    """(N,) one-sided log Pr[Z < phi], Z ~ OUT Gaussian, averaged over views."""
    if (fit.n_out < 1).any():
        raise ValueError("offline LiRA needs at least one OUT shadow model for every point")
    return norm.logcdf(target, fit.mean_out, fit.std_out).mean(axis=1)


def balanced_design(n_shadows: int, n_points: int, keep_fraction: float, seed: int) -> np.ndarray:
    """(S, N) bool: which points each shadow model trains on. Every point is IN for exactly the same number of
    shadows (round(keep_fraction * S), at least one and at most S - 1), so every point has both IN and OUT models
    and each shadow trains on about keep_fraction of the population, like the target."""
    if n_shadows < 2:
        raise ValueError("LiRA needs at least two shadow models")
    n_in = int(min(max(round(keep_fraction * n_shadows), 1), n_shadows - 1))
    rng = np.random.default_rng(seed)
    order = rng.random((n_shadows, n_points)).argsort(axis=0)
    return order < n_in
