"""Membership inference against diffusion models: per-image scores, higher = "more likely a training member".

White-box scores need the model's noise prediction eps_theta(x_t, t, c) at any t (a DDPM):

- ``loss`` (Matsumoto, Miura, Yanai 2023): -||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, c)||^2
  at a fixed t, with eps drawn per image from the attack's seed (``repeats`` draws averaged). Members were denoised
  during training, so their loss is lower; the paper finds intermediate t the most revealing.
- ``pia`` (Kong et al., ICLR 2024, "proximal initialization"): eps_0 = eps_theta(x0, 0, c) replaces the random
  noise, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_0, score -||eps_0 - eps_theta(x_t, t, c)||_p (p = 4 as in
  the paper's PIA; two queries per image, no randomness).
- ``secmi`` (Duan et al., ICML 2023, SecMI_stat): the deterministic DDIM inversion of x0 to x_t in steps of
  ``interval``, one inversion step further to x_{t+k}, one deterministic denoising step back to x^_t; score
  -||x^_t - x_t||^2 (the "t-error": members round-trip more exactly).

A one-step generator (SiD) has no noise prediction at arbitrary t - its UNet was trained only to map noise at
t_init to an image - so none of the three applies to it. What applies to every generator, one-step or not, is a
black-box score on its samples:

- ``nearest`` (Chen et al., CCS 2020, "GAN-Leaks", full black-box): -(distance from the image to the nearest of
  the model's generated samples of the same class). A generator that reproduces its (or its teacher's) training
  images puts samples right next to them.

All scores are computed in the model's space ([-1, 1] pixels); images come in as [0, 1] pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from robustdistill.attacks.privacy.metrics import MembershipMetrics, membership_metrics
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion_sampling import add_noise, alphas_cumprod, predict_noise, to_model_space

WHITE_BOX = ("loss", "pia", "secmi")
ATTACKS = (*WHITE_BOX, "nearest")


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, start + batch_size) for start in range(0, n, batch_size)]


def per_image_noise(n: int, shape: tuple[int, ...], seed: int, repeat: int) -> torch.Tensor:
    """Noise of ``n`` images for draw ``repeat``: the same for an image whatever else is scored with it."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0]))
    return torch.randn((n, *shape), generator=generator)


@torch.no_grad()
def loss_scores(model, images: torch.Tensor, labels: torch.Tensor, t: int, seed: int = 0, repeats: int = 1,
                batch_size: int = 256) -> np.ndarray:
    """-(mean squared noise-prediction error) at timestep ``t``, averaged over ``repeats`` seeded noise draws."""
    device = model.device
    x0 = to_model_space(images.float())
    total = torch.zeros(len(x0))
    for repeat in range(repeats):
        eps_all = per_image_noise(len(x0), tuple(x0.shape[1:]), seed, repeat)
        for part in _batches(len(x0), batch_size):
            x, eps, y = x0[part].to(device), eps_all[part].to(device), labels[part].to(device)
            x_t = add_noise(model, x, eps, t)
            error = (predict_noise(model, x_t, t, labels=y) - eps).pow(2).flatten(1).mean(1)
            total[part] += error.float().cpu()
    return -(total / repeats).numpy().astype(np.float64)


@torch.no_grad()
def pia_scores(model, images: torch.Tensor, labels: torch.Tensor, t: int, p: float = 4.0,
               batch_size: int = 256) -> np.ndarray:
    """PIA: -||eps_0 - eps_theta(x_t, t)||_p with eps_0 = eps_theta(x0, 0) and x_t built from eps_0."""
    device = model.device
    x0 = to_model_space(images.float())
    scores = []
    for part in _batches(len(x0), batch_size):
        x, y = x0[part].to(device), labels[part].to(device)
        eps_0 = predict_noise(model, x, 0, labels=y)
        x_t = add_noise(model, x, eps_0, t)
        gap = (predict_noise(model, x_t, t, labels=y) - eps_0).flatten(1)
        scores.append(-gap.abs().pow(p).mean(1).pow(1 / p).float().cpu())
    return torch.cat(scores).numpy().astype(np.float64)


def ddim_move(model, x: torch.Tensor, s: int, s_next: int, labels: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM update from timestep ``s`` to ``s_next`` (either direction: s_next > s inverts):
    x0^ = (x - sqrt(1 - abar_s) eps^) / sqrt(abar_s), then sqrt(abar_next) x0^ + sqrt(1 - abar_next) eps^."""
    eps = predict_noise(model, x, s, labels=labels)
    abar, abar_next = alphas_cumprod(model, s, x), alphas_cumprod(model, s_next, x)
    x0_hat = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    return abar_next.sqrt() * x0_hat + (1 - abar_next).sqrt() * eps


@torch.no_grad()
def secmi_scores(model, images: torch.Tensor, labels: torch.Tensor, t: int, interval: int = 10,
                 batch_size: int = 256) -> np.ndarray:
    """SecMI_stat: -||x^_t - x~_t||^2 after inverting x0 to t (steps of ``interval``) and one step beyond and back."""
    device = model.device
    x0 = to_model_space(images.float())
    path = [*range(0, t, interval), t]
    scores = []
    for part in _batches(len(x0), batch_size):
        x, y = x0[part].to(device), labels[part].to(device)
        for s, s_next in zip(path, path[1:], strict=False):
            x = ddim_move(model, x, s, s_next, y)
        beyond = ddim_move(model, x, t, t + interval, y)
        back = ddim_move(model, beyond, t + interval, t, y)
        scores.append(-(back - x).pow(2).flatten(1).mean(1).float().cpu())
    return torch.cat(scores).numpy().astype(np.float64)


def nearest_scores(images: torch.Tensor, labels: torch.Tensor, generated: torch.Tensor,
                   generated_labels: torch.Tensor) -> np.ndarray:
    """GAN-Leaks (full black-box): -(L2 distance, in [-1, 1] pixels, to the nearest generated sample of the same
    class)."""
    x, g = to_model_space(images.float()).flatten(1), to_model_space(generated.float()).flatten(1)
    scores = np.empty(len(x))
    for label in labels.unique().tolist():
        mine, theirs = labels == label, generated_labels == label
        if not bool(theirs.any()):
            raise UserInputError("samples", f"no generated sample of class {label} to compare with",
                                 "generate samples of every class")
        scores[mine.numpy()] = -torch.cdist(x[mine], g[theirs]).min(dim=1).values.double().numpy()
    return scores


# ----------------------------------------------------------------------------------------------------------------
# Calibration: choose t and the threshold on one half of the ground truth, report on the other


@dataclass(frozen=True)
class CalibratedResult:
    """An attack's evaluation-split metrics at the t and threshold chosen on the calibration split."""

    t: int | None
    threshold: float
    accuracy: float  # balanced accuracy on the evaluation split at the calibration threshold
    metrics: MembershipMetrics
    calibration_auc: dict[int, float]  # t -> AUC on the calibration split (what chose t)


def calibration_split(n_members: int, n_nonmembers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (calibration) of the members and the non-members: a seeded half of each."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7341]))
    masks = []
    for n in (n_members, n_nonmembers):
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: n // 2]] = True
        masks.append(mask)
    return masks[0], masks[1]


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold (score >= it -> member) of the best balanced accuracy on these points."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(is_member, scores, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else float(np.max(scores))


def balanced_accuracy_at(scores: np.ndarray, is_member: np.ndarray, threshold: float) -> float:
    guess = scores >= threshold
    return float((guess[is_member].mean() + (~guess[~is_member]).mean()) / 2)


def calibrated(scores_by_t: dict[int | None, np.ndarray], is_member: np.ndarray,
               calibration: np.ndarray) -> CalibratedResult:
    """Pick t (the highest calibration AUC) and the threshold (the best calibration balanced accuracy) on the
    ``calibration`` points; the metrics are the other points' at that t and threshold."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(is_member[calibration])) < 2 or len(np.unique(is_member[~calibration])) < 2:
        raise UserInputError("members", "too few members or non-members to calibrate on one half and evaluate on "
                             "the other", "audit a model with more training members and held-out images")
    cal_auc = {t: float(roc_auc_score(is_member[calibration], s[calibration])) for t, s in scores_by_t.items()}
    t = max(cal_auc, key=lambda key: (cal_auc[key], -(key or 0)))
    scores = scores_by_t[t]
    threshold = best_threshold(scores[calibration], is_member[calibration])
    evaluation = ~calibration
    return CalibratedResult(t, threshold, balanced_accuracy_at(scores[evaluation], is_member[evaluation], threshold),
                            membership_metrics(scores[evaluation], is_member[evaluation]), cal_auc)


def sweep_auc(scores_by_t: dict[int, np.ndarray], is_member: np.ndarray, evaluation: np.ndarray) -> dict[int, float]:
    """AUC of each t on the evaluation points: the vulnerability curve (shown, never used to choose)."""
    from sklearn.metrics import roc_auc_score

    return {t: float(roc_auc_score(is_member[evaluation], s[evaluation])) for t, s in scores_by_t.items()}


def check_timesteps(model, timesteps: Sequence[int], where: str, what: str = "timestep") -> None:
    total = int(model.scheduler.config.num_train_timesteps)
    bad = [t for t in timesteps if not 0 <= t < total]
    if bad:
        raise UserInputError(where, f"{what} {bad[0]} is outside the model's 0..{total - 1}",
                             f"choose timesteps below {total}")
