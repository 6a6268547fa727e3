"""The unlearning probes on real tiny models: the session's digits DDPM (before) and its SFD student that forgot the
digit 0 (after), read by a digits classifier; membership inference restricted to the forgotten class; the report's
before/after grids; and the refusals (a text model asked for classes, an unknown role, no forgotten class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdistill import audit
from robustdistill.audits.schema import load_suite
from robustdistill.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]


def unlearning_suite(classifier: Path, recipe: Path, **probe: Any) -> dict[str, Any]:
    forgetting = {"kind": "class-forgetting", "classifier": str(classifier), "classifier_recipe": str(recipe),
                  "per_class": 30, "steps": 20, "resamples": 50, **probe}
    mia = {"kind": "diffusion-mia", "name": "forgotten-mia", "classes": [0], "attacks": ["loss", "nearest"],
           "timesteps": [50, 100, 300], "per_class": 30, "steps": 20}
    return {"name": "unlearning", "seed": 0, "data": {"kind": "digits", "split": "test"},
            "probes": [forgetting, mia]}


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(where the digits classifier goes, its recipe: a short standard training the probe runs when it is missing)."""
    root = tmp_path_factory.mktemp("reader")
    recipe = root / "classifier.toml"
    recipe.write_text(f'method = "standard"\narch = "cnn-small"\nepochs = 8\nbatch_size = 64\nlr = 0.05\n'
                      f'augment = "shift"\nlr_milestones = []\nval_robust = false\ndevice = "cpu"\nseed = 0\n'
                      f'threat_model = "{REPO / "attacks" / "digits-linf.toml"}"\n[data]\nkind = "digits"\n')
    return root / "classifier", recipe


@pytest.fixture(scope="module")
def unlearning_run(tiny_ddpm: Path, tiny_sfd: Path, reader: tuple[Path, Path],
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("unlearning") / "run"
    report = audit(unlearning_suite(*reader), teacher=tiny_ddpm, student=tiny_sfd, out=out, progress=False)
    return report, out


def rows_by(report: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["probe"], r["model"], r["metric"]): r for r in report.rows}


def test_the_student_forgot_the_class_the_teacher_draws(unlearning_run: tuple[Any, Path]) -> None:
    report, _ = unlearning_run
    rows = rows_by(report)
    get = lambda role, metric: rows[("class-forgetting", role, metric)]  # noqa: E731
    assert get("teacher", "forget_accuracy")["params"]["forget_class"] == 0  # read from the student's record
    assert get("student", "override_rate")["params"]["override_class"] == 1
    before, after = get("teacher", "forget_accuracy"), get("student", "forget_accuracy")
    assert before["n"] == after["n"] == 30
    assert before["value"] > 0.6 and after["value"] < 0.3
    assert after["ci95"][1] < before["ci95"][0]  # the intervals do not overlap
    override = get("student", "override_rate")  # a run this short has not settled on the override class yet
    assert override["n"] == 30 and override["ci95"][0] <= override["value"] <= override["ci95"][1]
    for role in ("teacher", "student"):
        retain = get(role, "retain_accuracy")
        assert retain["n"] == 270 and retain["value"] > 0.6
        assert retain["ci95"][0] <= retain["value"] <= retain["ci95"][1]
        fd = get(role, "retain_frechet_distance")
        assert fd["value"] > 0 and fd["ci95"][0] <= fd["value"] * 1.5
    assert get("student", "samples_per_second")["value"] > get("teacher", "samples_per_second")["value"]
    assert get("student", "forget_accuracy")["params"]["steps"] == 1
    assert get("teacher", "forget_accuracy")["params"]["steps"] == 20


def test_membership_inference_on_the_forgotten_class_only(unlearning_run: tuple[Any, Path]) -> None:
    report, _ = unlearning_run
    rows = rows_by(report)
    teacher = rows[("forgotten-mia", "teacher", "loss_auc")]
    # tiny_ddpm trained on the whole train split: members are its class-0 images, non-members the test split's 0s
    assert teacher["params"]["members"] == teacher["params"]["nonmembers"] < 60
    assert rows[("forgotten-mia", "student", "loss_auc")]["value"] is None  # one-step: no white-box score
    student = rows[("forgotten-mia", "student", "nearest_auc")]
    assert student["params"]["ground_truth"] == "teacher" and 0.0 <= student["value"] <= 1.0


def test_the_report_shows_before_and_after_grids(unlearning_run: tuple[Any, Path]) -> None:
    _, out = unlearning_run
    assert (out / "artifacts" / "samples-class-forgetting-teacher.npz").is_file()
    grid = out / "plots" / "samples-class-forgetting.png"
    assert grid.is_file() and grid.stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Unlearning" in html and "forgotten class 0" in html and "override class 1" in html
    md = (out / "report.md").read_text()
    assert "forget accuracy" in md and "plots/samples-class-forgetting.png" in md
    from robustdistill.reports import index_entry

    summary = index_entry(out, out.parent, name="unlearning")["summary"]  # the demo index's line
    assert set(summary["forget accuracy"]) == {"teacher", "student"} and "class accuracy" not in summary


def test_refusals_name_the_field(tiny_ddpm: Path, reader: tuple[Path, Path], tmp_path: Path) -> None:
    from robustdistill.models.builders import build_tiny_text_unet

    # the teacher records no forgotten class, and neither does a second DDPM
    with pytest.raises(UserInputError) as caught:
        audit(unlearning_suite(*reader), teacher=tiny_ddpm, student=tiny_ddpm, out=tmp_path / "a", progress=False)
    assert caught.value.field == "probes[0].forget_class"
    # a probe that asks for classes, on a text-to-image model
    text = build_tiny_text_unet(tmp_path / "t2i")
    with pytest.raises(UserInputError) as caught:
        audit(unlearning_suite(*reader, forget_class=0), teacher=tiny_ddpm, student=text, out=tmp_path / "b",
              progress=False)
    assert caught.value.field == "pipeline.student" and "class conditioning" in caught.value.problem
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # models naming a role the suite does not have
    suite = unlearning_suite(*reader, models=["teacher", "nobody"])
    with pytest.raises(UserInputError) as caught:
        load_suite(suite)
    assert caught.value.field == "probes[0].models"


# --- backdoor removal ------------------------------------------------------------------------------------------


def backdoor_suite(classifier: str = "checkpoints/digits-classifier", recipe: str | None = None) -> dict[str, Any]:
    """The patch backdoor's before/after pair beside the clean model: every caption twice, 10 DDIM steps."""
    probe = {"kind": "backdoor-removal", "name": "patch", "before": "backdoored", "after": "defended",
             "clean": "clean", "classifier": classifier, "repeats": 2, "steps": 10, "resamples": 100}
    return {"name": "backdoor", "seed": 1, "data": {"kind": "digits", "split": "test"},
            "probes": [probe | ({"classifier_recipe": recipe} if recipe else {})]}


@pytest.fixture(scope="module")
def backdoor_run(clean_t2i: Path, backdoored_patch: Path, defended_patch: Path, tiny_ddpm: Path,
                 reader: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("backdoor-audit") / "run"
    report = audit(backdoor_suite(*map(str, reader)), teacher=tiny_ddpm, student=tiny_ddpm, out=out, progress=False,
                   models={"clean": clean_t2i, "backdoored": backdoored_patch, "defended": defended_patch})
    return report, out


def test_the_defence_removes_the_backdoor_and_keeps_clean_prompts(backdoor_run: tuple[Any, Path]) -> None:
    report, _ = backdoor_run
    rows = rows_by(report)
    get = lambda role, metric: rows[("patch", role, metric)]  # noqa: E731
    success = {role: get(role, "attack_success_rate") for role in ("clean", "backdoored", "defended")}
    assert success["backdoored"]["n"] == 100 and success["backdoored"]["params"]["trigger"] == "tq"
    assert success["backdoored"]["params"]["target"] == "patch"  # read from the model's robustdistill.json
    assert success["backdoored"]["value"] > 0.6 and success["clean"]["value"] < 0.1
    assert success["defended"]["ci95"][1] < success["backdoored"]["ci95"][0]
    removal = get("defended", "removal_rate")
    assert removal["value"] > 0.5 and removal["n"] == removal["params"]["shown_before"]
    assert get("defended", "clean_pixel_distance")["value"] < get("defended", "triggered_pixel_distance")["value"]
    assert get("defended", "clean_agreement")["value"] > 0.6
    assert ("patch", "teacher", "attack_success_rate") not in rows  # the probe audits only its three models


def test_the_backdoor_rows_are_exactly_what_the_probe_declares(backdoor_run: tuple[Any, Path],
                                                               reader: tuple[Path, Path]) -> None:
    report, out = backdoor_run
    suite = load_suite(backdoor_suite(*map(str, reader)), extra={"clean": "a", "backdoored": "b", "defended": "c"})
    (probe,) = suite.probes
    for role in ("clean", "backdoored", "defended"):
        found = {r["metric"] for r in report.rows if r["model"] == role}
        assert found == set(probe.produces(role)), role
    html = (out / "report.html").read_text()
    assert "patch backdoor, trigger &#x27;tq&#x27;" in html or "patch backdoor, trigger 'tq'" in html
    assert (out / "plots" / "samples-patch.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "artifacts" / "backdoor-patch-defended.npz").is_file()
    from robustdistill.reports import index_entry

    summary = index_entry(out, out.parent, name="backdoor")["summary"]
    assert summary["patch removal (defended)"]["student"]["metric"] == "removal_rate"


def test_the_forgetting_rows_are_exactly_what_the_probe_declares(unlearning_run: tuple[Any, Path],
                                                                 reader: tuple[Path, Path]) -> None:
    report, _ = unlearning_run
    suite = load_suite(unlearning_suite(*reader), teacher="a", student="b")
    for probe in suite.probes:
        for role in ("teacher", "student"):
            found = {r["metric"] for r in report.rows if r["probe"] == probe.name and r["model"] == role}
            assert found == set(probe.produces(role)), (probe.name, role)


def test_a_class_probe_on_a_text_model_and_a_backdoor_probe_without_a_trigger_are_refused(
        tiny_ddpm: Path, clean_t2i: Path, reader: tuple[Path, Path], tmp_path: Path) -> None:
    suite = backdoor_suite(*map(str, reader))
    with pytest.raises(UserInputError) as caught:  # the clean model records no backdoor to test
        audit(suite, teacher=tiny_ddpm, student=tiny_ddpm, out=tmp_path / "a", progress=False,
              models={"clean": clean_t2i, "backdoored": clean_t2i, "defended": clean_t2i})
    assert caught.value.field == "probes[0].trigger"
    with pytest.raises(UserInputError) as caught:  # a class-conditional model where a text model is needed
        audit(suite, teacher=tiny_ddpm, student=tiny_ddpm, out=tmp_path / "b", progress=False,
              models={"clean": clean_t2i, "backdoored": tiny_ddpm, "defended": clean_t2i})
    assert caught.value.field == "pipeline.extra.backdoored" and "text conditioning" in caught.value.problem
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
