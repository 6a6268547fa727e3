"""The demo's language-model pipelines: their suites audit the data their recipes train on (else lm-mia and
poison-filters refuse them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustdistill import demo, trainers
from robustdistill.audits import load_suite
from robustdistill.trainers import TRAINERS
from robustdistill.trainers.lm_config import load_lm_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["language", "bias"])
@pytest.mark.parametrize("quick", [False, True])
def test_the_language_suites_name_the_data_the_demo_trains_on(quick: bool, kind: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    pipeline = next(p for p in demo.PIPELINES if p.kind == kind)
    suite = load_suite(pipeline.suite("audits/demo.toml", quick))
    for name in (pipeline.teacher, pipeline.student):
        model = next(m for m in demo.MODELS if m.name == name)
        overrides = list(model.overrides) + (list(model.quick or ()) if quick else [])
        config = load_lm_recipe(TRAINERS.get(model.method).config_class, model.recipe, overrides, model.method)
        assert config.data.identity() == suite.data.identity(), (name, quick)


@pytest.mark.parametrize("quick", [False, True])
def test_the_diffusion_suites_read_samples_with_the_demos_classifier_and_share_them(
        quick: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The demo's clean digits teacher reads the samples (no second classifier trained), and the nearest-sample
    attack asks for the quality probe's samples (same per_class and steps: drawn once)."""
    monkeypatch.chdir(REPO)
    pipeline = next(p for p in demo.PIPELINES if p.kind == "diffusion")
    table = demo._suite_for(pipeline, "audits/demo.toml", quick, {demo.SAMPLE_READER: tmp_path / "reader"})
    quality, mia = (next(p for p in table["probes"] if p["kind"] == kind)
                    for kind in ("generation-quality", "diffusion-mia"))
    assert quality["classifier"] == str(tmp_path / "reader") and "classifier_recipe" not in quality
    assert "pipeline" not in table
    assert (quality["per_class"], quality["steps"]) == (mia["per_class"], mia["steps"])
    standalone = load_suite(pipeline.suite("audits/demo.toml", quick))
    assert standalone.pipeline.recipes == {"teacher": "defenses/digits-ddpm.toml", "student": "defenses/digits-sid.toml"}


@pytest.mark.parametrize("quick", [False, True])
def test_the_unlearning_suites_read_with_the_demos_classifier_and_audit_its_models(
        quick: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    pipeline = next(p for p in demo.PIPELINES if p.kind == "unlearning")
    table = demo._suite_for(pipeline, "audits/demo.toml", quick, {demo.SAMPLE_READER: tmp_path / "reader"})
    readers = [p for p in table["probes"] if p["kind"] in demo.READING_PROBES]
    assert {p["kind"] for p in readers} == {"class-forgetting", "backdoor-removal"}
    assert all(p["classifier"] == str(tmp_path / "reader") and "classifier_recipe" not in p for p in readers)
    forgetting, mia = (next(p for p in table["probes"] if p["kind"] == kind)
                       for kind in ("class-forgetting", "diffusion-mia"))
    assert (forgetting["per_class"], forgetting["steps"]) == (mia["per_class"], mia["steps"])  # drawn once
    roles = {role for role, _ in pipeline.extra}
    (tmp_path / "reader").mkdir()  # the suite checks the classifier is there; the demo trained it first
    suite = load_suite(table, teacher="t", student="s", extra={role: "x" for role in roles})
    assert {"teacher", "student"} | roles == set(suite.roles)
    standalone = load_suite(pipeline.suite("audits/demo.toml", quick))
    assert set(standalone.pipeline.extra) == roles
    # every model of the pipeline configures with its demo overrides (its parent passed the way its recipe names it)
    for name in (pipeline.student, *(model for _, model in pipeline.extra)):
        model = next(m for m in demo.MODELS if m.name == name)
        overrides = [*model.overrides, *((model.quick or ()) if quick else ())]
        if name in demo.TEACHER_OF:
            overrides.append(f"{model.parent}=checkpoints/somewhere")
        trainers.create(model.method, recipe=model.recipe, overrides=overrides)
