"""LiRA's building blocks: per-point scores from logits, query views, the shadow design and the Gaussian fits
(robustdistill.attacks.privacy.scores and .lira), checked against naive formulas and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustdistill.attacks.privacy import lira, scores


def naive_logit_of_true_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.double(), dim=-1).gather(-1, y[:, None]).squeeze(-1)
    return torch.log(p / (1 - p))


# --------------------------------------------------------------------------------------------------------------
# scores


def test_lira_score_is_the_logit_of_the_true_class_probability() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(50, 10, generator=generator)
    y = torch.randint(0, 10, (50,), generator=generator)
    phi = scores.lira_score(logits, y)
    assert phi.dtype == torch.float64 and phi.shape == (50,)
    torch.testing.assert_close(phi, naive_logit_of_true_class(logits, y), rtol=1e-9, atol=1e-9)
    # (views, N, C) logits with (N,) labels, as the probes pass them: each view scored on its own
    views = torch.stack([logits, logits.flip(-1), 2 * logits])
    stacked = scores.lira_score(views, y)
    assert stacked.shape == (3, 50)
    for q in range(3):
        torch.testing.assert_close(stacked[q], naive_logit_of_true_class(views[q], y), rtol=1e-9, atol=1e-9)


def test_lira_score_stays_finite_for_huge_logits() -> None:
    logits = torch.tensor([[1000.0, -1000.0], [1000.0, -1000.0], [-1000.0, 1000.0]])
    y = torch.tensor([0, 1, 1])
    naive = naive_logit_of_true_class(logits, y)
    assert not torch.isfinite(naive).all()  # the naive form saturates (p = 1 or 0)
    phi = scores.lira_score(logits, y)
    # two classes: log p_y - log p_other = z_y - z_other exactly
    torch.testing.assert_close(phi, torch.tensor([2000.0, -2000.0, 2000.0], dtype=torch.float64))
    # many classes, one dominant: z_y - logsumexp(others), finite
    wide = torch.full((1, 10), -1000.0)
    wide[0, 3] = 1000.0
    value = scores.lira_score(wide, torch.tensor([3]))
    assert torch.isfinite(value).all()
    assert float(value) == pytest.approx(2000.0 - math.log(9), abs=1e-9)


def test_loss_score_is_minus_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(40, 7, generator=generator)
    y = torch.randint(0, 7, (40,), generator=generator)
    expected = -torch.nn.functional.cross_entropy(logits.double(), y, reduction="none")
    torch.testing.assert_close(scores.loss_score(logits, y), expected, rtol=1e-10, atol=1e-10)
    # no overflow for confident logits: log p_y of a sure, right prediction is 0, of a sure, wrong one -2000
    huge = torch.tensor([[1000.0, -1000.0], [1000.0, -1000.0]])
    torch.testing.assert_close(scores.loss_score(huge, torch.tensor([0, 1])),
                               torch.tensor([0.0, -2000.0], dtype=torch.float64))


def test_confidence_score_is_the_largest_softmax_probability() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = 2 * torch.randn(30, 5, generator=generator)
    expected = torch.softmax(logits.double(), dim=-1).max(dim=-1).values
    torch.testing.assert_close(scores.confidence_score(logits), expected)
    assert float(scores.confidence_score(torch.zeros(1, 4))) == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------------------------
# query views


def test_query_view_counts_and_the_first_view_is_the_input() -> None:
    x = torch.rand(3, 1, 8, 8)
    for queries, count in (("none", 1), ("flip", 2), ("shift", 5), ("flip-shift", 10)):
        views = scores.query_views(x, queries)
        assert len(views) == count
        assert torch.equal(views[0], x)
        assert all(v.shape == x.shape for v in views)
    flip = scores.query_views(x, "flip")
    assert torch.equal(flip[1], x.flip(-1))
    both = scores.query_views(x, "flip-shift")
    assert torch.equal(both[1], x.flip(-1))
    shifts = [scores.shifted(x, dy, dx) for dy, dx in scores.SHIFTS]
    flipped_shifts = [scores.shifted(x.flip(-1), dy, dx) for dy, dx in scores.SHIFTS]
    assert all(torch.equal(a, b) for a, b in zip(both[2:], shifts + flipped_shifts))
    for bad in ("auto", "rotate"):
        with pytest.raises(ValueError):
            scores.query_views(x, bad)


def test_shifted_moves_pixels_by_one_with_zero_fill() -> None:
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    right = torch.tensor([[0.0, 1, 2], [0, 4, 5], [0, 7, 8]])
    left = torch.tensor([[2.0, 3, 0], [5, 6, 0], [8, 9, 0]])
    down = torch.tensor([[0.0, 0, 0], [1, 2, 3], [4, 5, 6]])
    up = torch.tensor([[4.0, 5, 6], [7, 8, 9], [0, 0, 0]])
    assert torch.equal(scores.shifted(x, 0, 1)[0, 0], right)
    assert torch.equal(scores.shifted(x, 0, -1)[0, 0], left)
    assert torch.equal(scores.shifted(x, 1, 0)[0, 0], down)
    assert torch.equal(scores.shifted(x, -1, 0)[0, 0], up)
    assert torch.equal(scores.shifted(x, 0, 0), x)
    # the four shifts the views use are exactly these
    assert sorted(scores.SHIFTS) == sorted([(0, 1), (0, -1), (1, 0), (-1, 0)])


def test_queries_follow_the_training_augmentation() -> None:
    assert scores.queries_for_augment("crop-flip") == "flip-shift"
    assert scores.queries_for_augment("shift") == "shift"
    assert scores.queries_for_augment("none") == "none"
    assert scores.queries_for_augment(None) == "none"


def test_logits_of_queries_every_view_in_eval_mode_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Dropout(0.5))
    model.train()
    x = torch.rand(7, 1, 8, 8)
    out = scores.logits_of(model, x, "shift", batch_size=3)
    assert out.shape == (5, 7, 10) and out.dtype == torch.float64
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        for q, view in enumerate(scores.query_views(x, "shift")):
            torch.testing.assert_close(out[q], model(view).double())  # dropout off: deterministic


# --------------------------------------------------------------------------------------------------------------
# the shadow design


@pytest.mark.parametrize(("shadows", "keep"), [(16, 0.5), (8, 0.25), (4, 0.75), (2, 0.9), (10, 0.01), (10, 0.99)])
def test_balanced_design(shadows: int, keep: float) -> None:
    n_points = 37
    design = lira.balanced_design(shadows, n_points, keep, seed=3)
    assert design.shape == (shadows, n_points) and design.dtype == bool
    n_in = min(max(round(keep * shadows), 1), shadows - 1)
    assert (design.sum(axis=0) == n_in).all()  # every point IN for exactly n_in shadows, OUT for the rest
    assert design.sum() == n_in * n_points
    assert np.array_equal(design, lira.balanced_design(shadows, n_points, keep, seed=3))
    assert not np.array_equal(design, lira.balanced_design(shadows, n_points, keep, seed=4))


def test_balanced_design_rows_are_random_subsets_of_about_keep() -> None:
    design = lira.balanced_design(16, 400, 0.5, seed=0)
    per_shadow = design.sum(axis=1)
    assert (abs(per_shadow - 200) < 50).all()  # each shadow trains on about half the population
    assert len({row.tobytes() for row in design}) == 16  # all different


@pytest.mark.parametrize("shadows", [0, 1])
def test_balanced_design_needs_two_shadows(shadows: int) -> None:
    with pytest.raises(ValueError, match="two shadow"):
        lira.balanced_design(shadows, 10, 0.5, seed=0)


# --------------------------------------------------------------------------------------------------------------
# Gaussian fits and the two tests


def synthetic(shadows: int = 64, points: int = 5, views: int = 2, std: float = 0.5, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores (S, N, Q), design (S, N), IN means (N,), OUT means (N,)): IN ~ N(mu_in, std), OUT ~ N(mu_out, std)."""
    rng = np.random.default_rng(seed)
    design = lira.balanced_design(shadows, points, 0.5, seed)
    mu_in = rng.uniform(2, 6, points)
    mu_out = mu_in - rng.uniform(2, 4, points)
    means = np.where(design, mu_in[None, :], mu_out[None, :])
    values = means[:, :, None] + rng.normal(0, std, (shadows, points, views))
    return values, design, mu_in, mu_out


@pytest.mark.parametrize("fixed_variance", [False, True])
def test_fit_gaussians_recovers_known_means(fixed_variance: bool) -> None:
    values, design, mu_in, mu_out = synthetic()
    fit = lira.fit_gaussians(values, design, fixed_variance)
    assert fit.fixed_variance is fixed_variance
    assert (fit.n_in == 32).all() and (fit.n_out == 32).all()
    assert fit.mean_in.shape == (5, 2)
    assert np.abs(fit.mean_in - mu_in[:, None]).max() < 0.35
    assert np.abs(fit.mean_out - mu_out[:, None]).max() < 0.35
    assert np.abs(fit.std_in - 0.5).max() < 0.2 and np.abs(fit.std_out - 0.5).max() < 0.2
    if fixed_variance:  # one variance per view, the same for every point
        assert np.allclose(fit.std_in, fit.std_in[:1]) and np.allclose(fit.std_out, fit.std_out[:1])


# A hand-sized example: 4 shadows, 2 points, 1 view.
HAND_DESIGN = np.array([[True, False], [True, True], [False, True], [False, False]])
HAND_SCORES = np.array([[1.0, 10.0], [3.0, 14.0], [0.0, 20.0], [4.0, 12.0]])[:, :, None]


def test_fixed_variance_pools_the_within_point_variance_by_hand() -> None:
    # Point 0: IN shadows 0, 1 -> scores 1, 3 (mean 2, squared residuals 1 + 1); OUT shadows 2, 3 -> 0, 4 (mean 2,
    # residuals 4 + 4). Point 1: IN shadows 1, 2 -> 14, 20 (mean 17, residuals 9 + 9); OUT 0, 3 -> 10, 12 (mean
    # 11, residuals 1 + 1). Pooled within-point variance: residuals over (4 scores - 2 means) degrees of freedom:
    # IN (2 + 18) / 2 = 10, OUT (8 + 2) / 2 = 5. (Pooling the raw IN scores 1, 3, 14, 20 would give ~83.)
    fit = lira.fit_gaussians(HAND_SCORES, HAND_DESIGN, fixed_variance=True)
    np.testing.assert_allclose(fit.mean_in[:, 0], [2.0, 17.0])
    np.testing.assert_allclose(fit.mean_out[:, 0], [2.0, 11.0])
    np.testing.assert_allclose(fit.std_in[:, 0], [math.sqrt(10), math.sqrt(10)])
    np.testing.assert_allclose(fit.std_out[:, 0], [math.sqrt(5), math.sqrt(5)])
    np.testing.assert_array_equal(fit.n_in, [2, 2])
    # per-point (sample) variances: IN 2 / 1 and 18 / 1, OUT 8 / 1 and 2 / 1
    per_point = lira.fit_gaussians(HAND_SCORES, HAND_DESIGN, fixed_variance=False)
    np.testing.assert_allclose(per_point.std_in[:, 0], [math.sqrt(2), math.sqrt(18)])
    np.testing.assert_allclose(per_point.std_out[:, 0], [math.sqrt(8), math.sqrt(2)])


def log_normal_pdf(x: float, mean: float, std: float) -> float:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def test_online_and_offline_scores_by_hand() -> None:
    fit = lira.fit_gaussians(HAND_SCORES, HAND_DESIGN, fixed_variance=True)
    target = np.array([[5.0], [11.0]])
    online = lira.online_scores(target, fit)
    expected = [log_normal_pdf(5.0, 2, math.sqrt(10)) - log_normal_pdf(5.0, 2, math.sqrt(5)),
                log_normal_pdf(11.0, 17, math.sqrt(10)) - log_normal_pdf(11.0, 11, math.sqrt(5))]
    np.testing.assert_allclose(online, expected, rtol=1e-10)
    # offline at the OUT mean: log Pr[Z < mu_out] = log 1/2
    np.testing.assert_allclose(lira.offline_scores(np.array([[2.0], [11.0]]), fit), [math.log(0.5)] * 2)


def test_scores_average_over_views() -> None:
    values, design, _, _ = synthetic(views=2)
    fit = lira.fit_gaussians(values, design, fixed_variance=False)
    target = np.stack([fit.mean_in[:, 0], fit.mean_out[:, 1]], axis=1)
    single = [lira.fit_gaussians(values[:, :, q : q + 1], design, False) for q in range(2)]
    for method in (lira.online_scores, lira.offline_scores):
        both = method(target, fit)
        separate = [method(target[:, q : q + 1], single[q]) for q in range(2)]
        np.testing.assert_allclose(both, (separate[0] + separate[1]) / 2, rtol=1e-10)


def test_online_score_says_member_near_the_in_mean() -> None:
    values, design, _, _ = synthetic()
    fit = lira.fit_gaussians(values, design, fixed_variance=True)
    assert (lira.online_scores(fit.mean_in, fit) > 0).all()
    assert (lira.online_scores(fit.mean_out, fit) < 0).all()


def test_offline_score_increases_with_the_target_score() -> None:
    values, design, _, _ = synthetic()
    fit = lira.fit_gaussians(values, design, fixed_variance=False)
    grid = np.linspace(-5, 10, 61)
    curve = np.array([lira.offline_scores(np.full((5, 2), t), fit) for t in grid])  # (61, N)
    assert np.isfinite(curve).all()
    assert (np.diff(curve, axis=0) > 0).all()
    assert (curve <= 0).all()  # a log probability


def test_degenerate_fits() -> None:
    # identical scores in every shadow: the std is floored, so the scores stay finite
    design = lira.balanced_design(4, 3, 0.5, seed=0)
    fit = lira.fit_gaussians(np.ones((4, 3, 1)), design, fixed_variance=False)
    assert (fit.std_in >= lira.MIN_STD).all() and (fit.std_out >= lira.MIN_STD).all()
    assert np.isfinite(lira.online_scores(np.ones((3, 1)), fit)).all()
    # a point never OUT (or never IN): neither test can score it
    always_in = np.ones((4, 3), dtype=bool)
    fit = lira.fit_gaussians(np.random.default_rng(0).normal(size=(4, 3, 1)), always_in, fixed_variance=False)
    with pytest.raises(ValueError, match="OUT"):
        lira.offline_scores(np.zeros((3, 1)), fit)
    with pytest.raises(ValueError, match="online"):
        lira.online_scores(np.zeros((3, 1)), fit)
    with pytest.raises(ValueError):
        lira.fit_gaussians(np.zeros((4, 3)), design, fixed_variance=False)  # not (S, N, Q)
