"""The demo's language-model pipelines: their suites audit the data their recipes train on (else lm-mia and
poison-filters refuse them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustdistill import demo
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
