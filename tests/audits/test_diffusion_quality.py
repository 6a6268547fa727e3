"""The generation-quality probe of the diffusion family, on real tiny models: the session's trained class-conditional
DDPM (``tiny_ddpm``) beside an untrained UNet of the same kind, read by a digits classifier that the probe trains
itself from ``classifier_recipe`` (once per module). Also: the Fréchet distance against the closed form for
Gaussians, and the refusals (a classifier that does not read digits, a model or probe of another family)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustdistill import audit
from robustdistill.audits.schema import load_suite
from robustdistill.errors import UserInputError
from robustdistill.stats import frechet_bootstrap_ci, frechet_distance

REPO = Path(__file__).resolve().parents[2]
PER_CLASS = 20
STEPS = 20
METRICS = {"class_accuracy", "frechet_distance", "samples_per_second"}


def quality_suite(classifier: str = "checkpoints/digits-classifier", recipe: str | None = None,
                  **top: Any) -> dict[str, Any]:
    """A generation-quality suite on the digits test split (the contract test uses it too)."""
    probe = {"kind": "generation-quality", "name": "quality", "classifier": classifier, "per_class": PER_CLASS,
             "steps": STEPS, "resamples": 50}
    return {"name": "diffusion-quality", "seed": 0, "data": {"kind": "digits", "split": "test"},
            "probes": [probe | ({"classifier_recipe": recipe} if recipe else {})], **top}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The classifier's recipe (a short standard training on digits: the probe trains it when it is missing) and
    an untrained class-conditional UNet."""
    from robustdistill.models import build_tiny_class_unet

    root = tmp_path_factory.mktemp("quality-models")
    recipe = root / "classifier.toml"
    recipe.write_text(f'method = "standard"\narch = "cnn-small"\nepochs = 8\nbatch_size = 64\nlr = 0.05\n'
                      f'augment = "shift"\nlr_milestones = []\nval_robust = false\ndevice = "cpu"\nseed = 0\n'
                      f'threat_model = "{REPO / "attacks" / "digits-linf.toml"}"\n[data]\nkind = "digits"\n')
    return {"recipe": recipe, "classifier": root / "classifier", "random": build_tiny_class_unet(root / "random")}


@pytest.fixture(scope="module")
def quality_run(tiny_ddpm: Path, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("quality") / "run"
    assert not models["classifier"].exists()
    report = audit(quality_suite(str(models["classifier"]), str(models["recipe"])), teacher=tiny_ddpm,
                   student=models["random"], out=out, progress=False)
    return report, out


def rows_by(report: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["model"], r["metric"]): r for r in report.rows}


# --- the Fréchet distance itself -----------------------------------------------------------------------------


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    """N(mu_a, diag(1, 4, 0.25)) vs N(mu_b, diag(9, 1, 0.25)): |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2
    = 2 + (1 - 3)^2 + (2 - 1)^2 + 0 = 7 for diagonal covariances."""
    rng = np.random.default_rng(0)
    a = rng.normal([0, 0, 0], [1, 2, 0.5], size=(200_000, 3))
    b = rng.normal([1, -1, 0], [3, 1, 0.5], size=(200_000, 3))
    assert frechet_distance(a, b) == pytest.approx(7.0, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Correlated covariances, against the full formula with symmetric square roots.
    cov_a, cov_b = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    x = rng.multivariate_normal([0, 0], cov_a, size=200_000)
    y = rng.multivariate_normal([0.5, 0], cov_b, size=200_000)
    root_a = _sym_sqrt(cov_a)
    expected = 0.25 + np.trace(cov_a + cov_b - 2 * _sym_sqrt(root_a @ cov_b @ root_a))
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)
    lo, hi = frechet_bootstrap_ci(x[:2000], y[:2000], seed=0, resamples=50)
    assert lo <= frechet_distance(x[:2000], y[:2000]) <= hi and lo < expected * 1.3 and hi > expected * 0.7


def test_frechet_distance_stays_real_and_finite_with_fewer_samples_than_dimensions() -> None:
    """Singular covariances (5 points in 16 dimensions): the square root is complex or non-finite in scipy's
    hands; the distance stays a finite, non-negative real number, 0 for a set against itself."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 16)), rng.normal(1.0, 1.0, size=(5, 16))
    gap = frechet_distance(a, b)
    assert np.isfinite(gap) and gap > 0 and isinstance(gap, float)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :3])


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T


# --- the probe on real models ----------------------------------------------------------------------------------


def test_the_probe_emits_exactly_what_it_declares_and_trains_its_classifier(quality_run: tuple[Any, Path],
                                                                             models: dict[str, Path]) -> None:
    from robustdistill.models import checkpoint_sha256

    report, out = quality_run
    suite = load_suite(quality_suite(str(models["classifier"]), str(models["recipe"])))
    (probe,) = suite.probes
    for role in ("teacher", "student"):
        emitted = {r["metric"] for r in report.rows if r["model"] == role and r["probe"] == "quality"}
        assert emitted == set(probe.produces(role)) == METRICS
    assert (models["classifier"] / "config.json").is_file()  # trained from classifier_recipe
    rows = rows_by(report)
    sha = checkpoint_sha256(models["classifier"])
    for (role, _), row in rows.items():
        assert row["params"]["classifier_sha256"] == sha and row["params"]["steps"] == STEPS
        assert row["n"] == 10 * PER_CLASS and row["ci95"] is not None
    assert {"group": "generation", "family": "diffusion", "probes": ["quality"]} in report.sections


def test_the_trained_ddpm_draws_the_digits_asked_for_and_a_random_unet_does_not(quality_run: tuple[Any, Path]) -> None:
    report, _ = quality_run
    rows = rows_by(report)
    trained, random = rows[("teacher", "class_accuracy")], rows[("student", "class_accuracy")]
    print(f"class accuracy: trained {trained['value']:.3f} {trained['ci95']}, random {random['value']:.3f} "
          f"{random['ci95']}")
    assert trained["value"] >= 0.5 and trained["ci95"][0] > 0.3  # chance is 0.1
    assert random["value"] <= 0.3  # noise read as digits: near chance (a classifier may favour a class or two)
    fd_trained, fd_random = rows[("teacher", "frechet_distance")], rows[("student", "frechet_distance")]
    print(f"Frechet distance: trained {fd_trained['value']:.3f} {fd_trained['ci95']}, random "
          f"{fd_random['value']:.3f} {fd_random['ci95']}")
    assert fd_random["value"] > 3 * fd_trained["value"] and fd_random["ci95"][0] > fd_trained["ci95"][1]
    for role in ("teacher", "student"):
        speed = rows[(role, "samples_per_second")]
        assert speed["value"] > 0 and speed["ci95"][0] <= speed["value"] <= speed["ci95"][1]


def test_real_images_against_themselves_are_at_distance_zero(quality_run: tuple[Any, Path],
                                                              models: dict[str, Path]) -> None:
    """The classifier's features of the real test split against themselves: 0; against the real val split (other
    real digits): far below the random UNet's samples."""
    from robustdistill.audits.families import family
    from robustdistill.audits.probes.diffusion.context import DiffusionContext

    report, _ = quality_run
    suite = load_suite(quality_suite(str(models["classifier"])))
    (probe,) = suite.probes
    data = family("diffusion").load_data(suite)
    probe.check_data({}, data)
    ctx = DiffusionContext(models={}, seed=0, batch_size=256, data=data)
    real = probe.real_features(ctx)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    from robustdistill.data import load_split

    other = probe.read(load_split({"kind": "digits"}, "val").x, 256)[1]
    assert frechet_distance(other, real) < 0.25 * rows_by(report)[("student", "frechet_distance")]["value"]


def test_samples_are_saved_for_the_report_and_its_grids_render(quality_run: tuple[Any, Path]) -> None:
    report, out = quality_run
    for role in ("teacher", "student"):
        with np.load(out / "artifacts" / f"samples-quality-{role}.npz") as npz:
            assert npz["images"].shape == (10 * PER_CLASS, 1, 8, 8)
            assert 0.0 <= npz["images"].min() and npz["images"].max() <= 1.0
            assert list(np.bincount(npz["labels"])) == [PER_CLASS] * 10
            accuracy = rows_by(report)[(role, "class_accuracy")]["value"]
            assert np.mean(npz["predicted"] == npz["labels"]) == pytest.approx(accuracy)
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert '<section id="generation">' in html and "](plots/samples-quality.png)" in md
    assert (out / "plots" / "samples-quality.png").read_bytes().startswith(b"\x89PNG")


def test_the_same_seed_gives_the_same_rows(quality_run: tuple[Any, Path], tiny_ddpm: Path, models: dict[str, Path],
                                           tmp_path: Path) -> None:
    """Everything but the timing (samples per second depends on the machine's load)."""
    report, _ = quality_run
    again = audit(quality_suite(str(models["classifier"]), str(models["recipe"])), teacher=tiny_ddpm,
                  student=models["random"], out=tmp_path / "again", progress=False)

    def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["metric"] != "samples_per_second"]

    assert stable(again.rows) == stable(report.rows)


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["cifar-shaped", "language-model"])
def test_a_classifier_that_does_not_read_digits_is_refused_naming_it(
        wrong: str, tiny_ddpm: Path, models: dict[str, Path], tmp_path: Path) -> None:
    from robustdistill.models import Classifier, build_tiny_causal_lm, save_checkpoint

    if wrong == "cifar-shaped":
        path = tmp_path / "cifar"
        save_checkpoint(Classifier.from_arch("cnn-tiny", num_classes=10, input_shape=(3, 32, 32)), path)
    else:
        path = build_tiny_causal_lm(tmp_path / "lm", arch="gpt2", seed=0)
    with pytest.raises(UserInputError) as info:
        audit(quality_suite(str(path)), teacher=tiny_ddpm, student=models["random"], out=tmp_path / "out",
              progress=False)
    assert info.value.field == "probes[0].classifier" and str(path) in info.value.problem
    assert not (tmp_path / "out").exists()


def test_a_classifier_probe_or_model_in_a_diffusion_suite_is_refused_naming_the_probe_and_role(
        quality_run: tuple[Any, Path], tiny_ddpm: Path, models: dict[str, Path], tmp_path: Path) -> None:
    mixed = quality_suite(str(models["classifier"]))
    mixed["probes"].append({"kind": "clean"})
    mixed["threat_model"] = {"use": str(REPO / "attacks" / "digits-linf.toml")}
    with pytest.raises(UserInputError) as info:
        audit(mixed, teacher=tiny_ddpm, student=models["random"], out=tmp_path / "mixed", progress=False)
    assert info.value.field == "probes[1]" and "clean" in info.value.problem and "diffusion" in info.value.problem
    # A classifier given as the student of a diffusion suite.
    with pytest.raises(UserInputError) as info:
        audit(quality_suite(str(models["classifier"])), teacher=tiny_ddpm, student=models["classifier"],
              out=tmp_path / "wrong-model", progress=False)
    assert info.value.field == "probes[0]" and "generation-quality" in info.value.problem
    assert "student" in info.value.problem and "an image classifier" in info.value.problem
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "wrong-model").exists()
