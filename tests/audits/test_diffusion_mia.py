"""Membership inference against diffusion models (robustdistill.attacks.privacy.diffusion and the diffusion-mia
probe), on real models: a DDPM overfit on a tenth of the digits train split (108 images, 150 epochs, ~30 s), whose
unseen train images are the non-members; and a (briefly trained) SiD one-step student of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from robustdistill import audit, trainers
from robustdistill.attacks.privacy import diffusion as mia
from robustdistill.attacks.privacy.membership import from_provenance
from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import load_diffusion_model

REPO = Path(__file__).resolve().parents[2]
OVERFIT = ["device=cpu", "train_fraction=0.1", "epochs=150", "channels=[16,32]"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("overfit") / "ddpm"
    return trainers.create("ddpm", recipe=REPO / "defenses" / "digits-ddpm.toml", overrides=OVERFIT).fit(out)


@pytest.fixture(scope="module")
def truth(overfit: Path) -> tuple[Any, Any]:
    model = load_diffusion_model(overfit)
    return model, from_provenance("teacher", model.provenance, "teacher", "retrain")


def test_non_members_against_non_members_score_as_chance(truth: tuple[Any, Any]) -> None:
    """Null calibration: the 971 images the model never saw, split at random into pretend members and non-members."""
    model, gt = truth
    others = np.flatnonzero(~gt.is_member)
    assert len(others) == 1079 - 108
    x, y = gt.population.x[others], gt.population.y[others]
    pretend = np.zeros(len(others), dtype=bool)
    pretend[np.random.default_rng(0).permutation(len(others))[: len(others) // 2]] = True
    for t in (50, 100, 300):
        auc = roc_auc_score(pretend, mia.loss_scores(model, x, y, t, seed=0))
        print(f"null loss AUC at t={t}: {auc:.3f}")
        assert abs(auc - 0.5) < 0.05
    assert abs(roc_auc_score(pretend, mia.pia_scores(model, x, y, 100)) - 0.5) < 0.05


def test_the_overfit_ddpm_leaks_most_at_an_intermediate_timestep(truth: tuple[Any, Any]) -> None:
    """The seed paper's finding (Matsumoto et al. 2023): the loss at intermediate t separates members best; near 0
    the noise is too small to tell, near T the image is gone."""
    model, gt = truth
    x, y, members = gt.population.x, gt.population.y, gt.is_member
    auc = {t: roc_auc_score(members, mia.loss_scores(model, x, y, t, seed=0, repeats=4)) for t in (1, 50, 100, 900)}
    print("loss AUC by t:", {t: round(a, 3) for t, a in auc.items()})
    middle = max(auc[50], auc[100])
    assert middle > 0.65 and middle > auc[1] + 0.03 and middle > auc[900] + 0.1
    from robustdistill.attacks.privacy.metrics import auc_interval

    assert auc_interval(middle, 108, 971)[0] > 0.5


def test_calibration_chooses_t_and_threshold_on_its_own_half_only() -> None:
    """Scores for which t=1 separates the calibration half and t=2 the evaluation half: t=1 must be chosen (and
    then scores as chance on the evaluation half), never the t that looks best on the reported points."""
    rng = np.random.default_rng(0)
    is_member = np.repeat([True, False], 200)
    calibration = np.tile(np.repeat([True, False], 100), 2)
    informative = is_member * 3.0 + rng.normal(size=400)
    noise = rng.normal(size=400)
    scores = {1: np.where(calibration, informative, noise), 2: np.where(calibration, noise, informative)}
    result = mia.calibrated(scores, is_member, calibration)
    assert result.t == 1 and result.calibration_auc[1] > 0.9 > 0.6 > result.calibration_auc[2]
    assert abs(result.metrics.auc - 0.5) < 0.1 and abs(result.accuracy - 0.5) < 0.1
    # The threshold of the best balanced accuracy on the calibration half, applied unchanged.
    guess = scores[1][calibration] >= result.threshold
    labels = is_member[calibration]
    assert (guess[labels].mean() + (~guess[~labels]).mean()) / 2 > 0.9


def test_secmi_and_pia_agree_with_their_definitions_on_a_real_model(truth: tuple[Any, Any]) -> None:
    from robustdistill.models.diffusion_sampling import predict_noise, to_model_space

    model, gt = truth
    x, y = gt.population.x[:4], gt.population.y[:4]
    x0 = to_model_space(x)
    with torch.no_grad():
        eps0 = predict_noise(model, x0, 0, labels=y)
        abar = model.scheduler.alphas_cumprod[100]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps0
        gap = predict_noise(model, x_t, 100, labels=y) - eps0
    expected = -(gap.abs() ** 4).flatten(1).mean(1) ** 0.25
    assert np.allclose(mia.pia_scores(model, x, y, 100), expected.numpy(), rtol=1e-4)
    # SecMI with one inversion step of 10 to t = 10, then 10 -> 20 -> 10 (a hand-written DDIM step).
    ac = model.scheduler.alphas_cumprod

    def move(z: torch.Tensor, s: int, s_next: int) -> torch.Tensor:
        with torch.no_grad():
            eps = predict_noise(model, z, s, labels=y)
        x0_hat = (z - (1 - ac[s]).sqrt() * eps) / ac[s].sqrt()
        return ac[s_next].sqrt() * x0_hat + (1 - ac[s_next]).sqrt() * eps

    x_10 = move(x0, 0, 10)
    back = move(move(x_10, 10, 20), 20, 10)
    assert np.allclose(mia.secmi_scores(model, x, y, 10, 10), -(back - x_10).pow(2).flatten(1).mean(1).numpy(),
                       rtol=1e-4)


# --- the probe -------------------------------------------------------------------------------------------------


def mia_suite(**probe: Any) -> dict[str, Any]:
    spec = {"kind": "diffusion-mia", "name": "mia", "timesteps": [1, 50, 100, 900], "per_class": 20, "steps": 10,
            "secmi_t": 50, "members": 100} | probe
    return {"name": "diffusion-mia", "seed": 0, "data": {"kind": "digits", "split": "test"}, "probes": [spec]}


@pytest.fixture(scope="module")
def one_step(overfit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few SiD steps: a real one-step generator (poor samples), enough to check what applies to it."""
    out = tmp_path_factory.mktemp("sid") / "generator"
    tiny = ["device=cpu", "epochs=1", "steps_per_epoch=3", "batch_size=16", f"teacher={overfit}"]
    return trainers.create("sid", overrides=tiny).fit(out)


@pytest.fixture(scope="module")
def probe_run(overfit: Path, one_step: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("mia") / "run"
    return audit(mia_suite(), teacher=overfit, student=one_step, out=out, progress=False), out


def test_the_probe_reports_calibrated_attacks_and_the_sweep(probe_run: tuple[Any, Path]) -> None:
    report, out = probe_run
    rows = {(r["model"], r["metric"]): r for r in report.rows}
    teacher_auc = rows[("teacher", "loss_auc")]
    print({m: r["value"] for (role, m), r in rows.items() if role == "teacher" and m.endswith("_auc")})
    assert teacher_auc["params"]["t"] in (1, 50, 100, 900) and teacher_auc["params"]["members"] == 100
    assert teacher_auc["n"] == 100  # the evaluation half: 50 members + 50 non-members
    assert teacher_auc["value"] > 0.5 and teacher_auc["ci95"][0] <= teacher_auc["value"] <= teacher_auc["ci95"][1]
    assert {f"loss_auc_t{t}" for t in (1, 50, 100, 900)} <= {m for (role, m) in rows if role == "teacher"}
    # The one-step student: white-box rows carry no value and say why; the nearest-sample attack has one.
    for metric in ("loss_auc", "pia_auc", "secmi_auc", "loss_auc_t50"):
        assert rows[("student", metric)]["value"] is None
        assert rows[("student", metric)]["params"]["note"].startswith("not applicable")
    assert rows[("student", "nearest_auc")]["value"] is not None
    html = (out / "report.html").read_text()
    assert '<section id="diffusion-privacy">' in html and "n/a" in html
    assert (out / "plots" / "diffusion_mia_by_t.png").read_bytes().startswith(b"\x89PNG")
    assert "](plots/diffusion_mia_by_t.png)" in (out / "report.md").read_text()
    # The terminal summary: each attack's AUC per model, "n/a" where it does not apply.
    lines = {line.split("  ")[0].strip(): line for line in report.summary().splitlines()}
    assert lines["MIA loss AUC"].split()[-1] == "n/a" and f"(t={teacher_auc['params']['t']})" in lines["MIA loss AUC"]
    assert "n/a" not in lines["MIA nearest AUC"]


def test_the_demo_headline_takes_the_probes_rows(probe_run: tuple[Any, Path]) -> None:
    from robustdistill import demo

    report, _ = probe_run
    teacher, student = demo._diffusion_headline(report)
    assert teacher["loss_auc"][0] == report.value("teacher", "mia", "loss_auc")
    assert student["loss_auc"] == (None, None) and student["nearest_auc"][0] is not None
    assert teacher["class_accuracy"] is None  # this suite has no quality probe


def test_the_probe_refuses_a_teacher_without_members_and_a_timestep_past_the_schedule(
        overfit: Path, one_step: Path, tmp_path: Path) -> None:
    from robustdistill.models import build_tiny_class_unet

    stranger = build_tiny_class_unet(tmp_path / "stranger")
    with pytest.raises(UserInputError) as caught:
        audit(mia_suite(), teacher=stranger, student=one_step, out=tmp_path / "a", progress=False)
    assert caught.value.field == "pipeline.teacher" and "no ground truth" in caught.value.problem
    with pytest.raises(UserInputError) as caught:
        audit(mia_suite(timesteps=[50, 1000]), teacher=overfit, student=one_step, out=tmp_path / "b", progress=False)
    assert caught.value.field == "probes[0].timesteps" and "1000" in caught.value.problem
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_index_page_shows_the_diffusion_columns(probe_run: tuple[Any, Path], tmp_path: Path) -> None:
    from robustdistill.reports import index_entry, render_index

    _, out = probe_run
    entry = index_entry(out, out.parent, name="diffusion")
    assert {"MIA loss AUC", "MIA nearest-sample AUC"} <= set(entry["summary"])
    assert "MIA AUC (teacher's members)" not in entry["summary"]  # the language-model column
    assert set(entry["summary"]["MIA loss AUC"]) == {"teacher"}  # the one-step student's row has no value
    render_index([entry], tmp_path / "index.html", title="diffusion")
    assert "MIA nearest-sample" in (tmp_path / "index.html").read_text()
