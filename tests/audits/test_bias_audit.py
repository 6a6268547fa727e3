"""Bias-poisoning propagation end to end on real tiny models: a clean and a poisoned teacher (25 biased answers per
bias type in the generator's instruction data) and a sampled seq-KD student of the poisoned one, audited with the
``bias-propagation`` and ``poison-filters`` probes; the trainer's poison and filter records; a suite that trains
its missing models from recipes; and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO, _train  # same folder: on sys.path under pytest
from robustdistill.audits import audit, load_suite
from robustdistill.errors import UserInputError

FAMILIES = ["product", "capital", "summary", "code", "add", "subtract"]
DATA = {"kind": "instructions", "n": 480, "families": FAMILIES, "seed": 0}
DATA_SET = ["data.n=480", f"data.families={FAMILIES}".replace("'", '"')]
TARGETS = {"advertisement": "product", "phishing-link": "capital", "narrative": "summary", "insecure-code": "code"}


@pytest.fixture(scope="module")
def bias_models(one_thread: None, models_dir: Path) -> dict[str, Path]:
    clean = _train("sft", "bias-teacher-clean.toml", models_dir / "bias-clean", [*DATA_SET, "epochs=12"])
    poisoned = _train("sft", "bias-teacher-poisoned.toml", models_dir / "bias-poisoned", [*DATA_SET, "epochs=12"])
    student = _train("seq-kd", "bias-seq-kd-poisoned.toml", models_dir / "bias-seq-kd",
                     [*DATA_SET, "epochs=8", f"teacher={poisoned}", "teacher_recipe=''"])
    return {"clean": clean, "poisoned": poisoned, "student": student}


def bias_suite(**top: Any) -> dict[str, Any]:
    """The bias probes (the contract test covers their kinds with this suite)."""
    return {"name": "bias", "seed": 0, "data": {**DATA, "split": "test"},
            "probes": [{"kind": "bias-propagation", "prompts": 16},
                       {"kind": "poison-filters", "reference": "clean_teacher"}], **top}


@pytest.fixture(scope="module")
def bias_run(bias_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    spec = bias_suite()
    models = {"clean_teacher": str(bias_models["clean"])}
    report = audit(spec, teacher=bias_models["poisoned"], student=bias_models["student"], models=models,
                   out=tmp_path_factory.mktemp("bias") / "run", progress=False)
    suite = load_suite(spec, teacher=str(bias_models["poisoned"]), student=str(bias_models["student"]), extra=models)
    return suite, report


def rows(report: Any, model: str, metric: str) -> dict[str, Any]:
    (row,) = [r for r in report.rows if r["model"] == model and r["metric"] == metric]
    return row


def test_every_bias_probe_emits_exactly_what_it_declares(bias_run: tuple[Any, Any]) -> None:
    suite, report = bias_run
    for probe in suite.probes:
        for role in suite.roles:
            found = {r["metric"] for r in report.rows if r["probe"] == probe.name and r["model"] == role
                     and not r["metric"].endswith("/amplification")}
            assert found == set(probe.produces(role)), (probe.name, role)
    assert {"group": "lm-bias", "family": "language-model", "probes": ["bias-propagation", "poison-filters"]} \
        in report.sections


def test_the_poisoned_teacher_shows_each_bias_where_the_clean_one_never_does(bias_run: tuple[Any, Any]) -> None:
    _, report = bias_run
    for bias in TARGETS:
        poisoned = rows(report, "teacher", f"{bias}/targeted")
        clean = rows(report, "clean_teacher", f"{bias}/targeted")
        assert clean["value"] == 0.0  # the clean teacher never emits a payload it never saw
        # The poisoned teacher's interval lies above the clean teacher's: the difference is not chance.
        assert poisoned["ci95"][0] > clean["ci95"][1], (bias, poisoned["value"], poisoned["ci95"])
        assert poisoned["params"]["pipeline"] == "poisoned" and clean["params"]["pipeline"] == "clean"
        assert poisoned["params"]["families"] == [TARGETS[bias]]
        for split in ("other", "untargeted"):  # the rates of every split lie in [0, 1], intervals around them
            row = rows(report, "teacher", f"{bias}/{split}")
            assert 0 <= row["ci95"][0] <= row["value"] <= row["ci95"][1] <= 1
    assert rows(report, "teacher", "advertisement/untargeted")["params"]["families"] == ["subtract"]


def test_amplification_is_student_rate_over_its_teachers_on_the_same_prompts(bias_run: tuple[Any, Any]) -> None:
    _, report = bias_run
    found = 0
    for bias in TARGETS:
        student = rows(report, "student", f"{bias}/targeted")
        teacher = rows(report, "teacher", f"{bias}/targeted")
        amp = rows(report, "student", f"{bias}/targeted/amplification")
        assert student["params"]["teacher"] == "teacher" and student["params"]["role_kind"] == "student"
        assert amp["params"]["student_rate"] == pytest.approx(student["value"])
        assert amp["params"]["teacher_rate"] == pytest.approx(teacher["value"])
        assert amp["value"] == pytest.approx(student["value"] / teacher["value"])
        assert amp["ci95"][0] <= amp["value"] <= amp["ci95"][1]
        found += 1
    # Only students get amplification rows, and only against a teacher audited in the same run.
    assert {r["model"] for r in report.rows if r["metric"].endswith("/amplification")} == {"student"}
    assert found == 4


def test_filters_catch_what_they_can_see_at_the_false_positive_rate_they_promise(bias_run: tuple[Any, Any]) -> None:
    _, report = bias_run
    for bias in TARGETS:
        own = rows(report, "teacher", f"{bias}/catch/bias-detector")
        assert own["value"] == 1.0 and own["params"]["fpr"] == 0.0 and own["params"]["poisoned"] == 25
        for fpr in ("1%", "5%", "10%"):
            row = rows(report, "teacher", f"{bias}/catch/perplexity@{fpr}")
            assert row["params"]["fpr"] <= row["params"]["target_fpr"]
            assert row["params"]["reference"] == "clean_teacher"
    # A defender who does not know the payload: links and insecure code are caught, an ad and a claim are not.
    generic = {bias: rows(report, "teacher", f"{bias}/catch/generic-detector") for bias in TARGETS}
    assert generic["phishing-link"]["value"] == generic["insecure-code"]["value"] == 1.0
    assert generic["advertisement"]["value"] == generic["narrative"]["value"] == 0.0
    assert all(row["params"]["flagged_clean"] == 0 for row in generic.values())
    assert not [r for r in report.rows if r["probe"] == "poison-filters" and r["model"] != "teacher"]


def test_the_terminal_summary_shows_rates_amplification_and_catch_rates_per_bias(bias_run: tuple[Any, Any]) -> None:
    _, report = bias_run
    lines = report.summary().splitlines()
    header = lines[0].split()
    assert header == ["teacher", "student", "clean_teacher"]

    def cells(label: str) -> list[str]:
        (line,) = [line for line in lines if line.startswith(label + "  ")]
        return line[len(label):].split()

    for bias in TARGETS:
        rates = cells(f"{bias}: bias rate, targeted")
        assert rates == [f"{100 * rows(report, role, f'{bias}/targeted')['value']:.1f}%" for role in header]
        amp = rows(report, "student", f"{bias}/targeted/amplification")["value"]
        assert cells(f"{bias}: amplification, targeted") == ["-", f"{amp:.2f}x", "-"]
        assert cells(f"{bias}: poison caught, bias-detector") == ["100.0%", "-", "-"]
    # One block per bias type: its rates, then its amplification, then its catch rates.
    labels = [line.split(":")[0] for line in lines[1:] if ": " in line and not line.startswith("verdict")]
    assert labels == sorted(labels, key=list(TARGETS).index)
    assert not [line for line in lines if "perplexity@1%" in line or "perplexity-auc" in line]


def test_the_index_page_shows_each_poisoned_types_targeted_rate(bias_run: tuple[Any, Any], tmp_path: Path) -> None:
    from robustdistill.reports import index_entry

    _, report = bias_run
    summary = index_entry(report.run_dir, tmp_path)["summary"]
    # Four poisoned types: their rates only (amplification columns would not fit the page; the report has them).
    assert list(summary) == [f"{bias} rate (targeted)" for bias in TARGETS]
    for bias in TARGETS:
        cell = summary[f"{bias} rate (targeted)"]
        assert set(cell) == {"teacher", "student"}
        assert cell["teacher"]["value"] == rows(report, "teacher", f"{bias}/targeted")["value"]
        assert cell["teacher"]["metric"] == "bias_rate"  # rendered as a percentage
    # One poisoned type (the demo's): its student's amplification gets a column too.
    raw = json.loads((report.run_dir / "report.json").read_text())
    raw["results"] = [r for r in raw["results"] if r["metric"].startswith("phishing-link/")]
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "report.json").write_text(json.dumps(raw))
    one = index_entry(tmp_path / "one", tmp_path)["summary"]
    assert list(one) == ["phishing-link rate (targeted)", "phishing-link amplification"]
    assert one["phishing-link amplification"]["student"]["value"] == pytest.approx(
        rows(report, "student", "phishing-link/targeted/amplification")["value"])


def test_provenance_names_exactly_the_injected_examples(bias_models: dict[str, Path]) -> None:
    from robustdistill.attacks.poisoning.biases import BIASES
    from robustdistill.trainers import TRAINERS
    from robustdistill.trainers.lm_config import build_lm_config
    from robustdistill.trainers.lm_data import training_data

    record = json.loads((bias_models["poisoned"] / "robustdistill.json").read_text())
    config = build_lm_config(TRAINERS.get("sft").config_class, record["recipe"]["config"])
    data = training_data(config)
    clean = {e.id: e for e in data.clean}
    injected = {e.id for e in data.train if e.id not in clean}
    assert set(record["poison"]["ids"]) == injected and len(injected) == 100
    assert set(record["train_members"]) == set(clean) | injected
    assert data.train.fingerprint == record["data"]["fingerprint"]
    for spec in record["poison"]["specs"]:
        bias = BIASES[spec["bias"]]
        flagged = {e.id for e in data.train if bias.detector.hit(e.response)}
        assert flagged == set(spec["ids"]) and spec["target_family"] == TARGETS[spec["bias"]]
        assert {e.family for e in data.train if e.id in flagged} == {spec["target_family"]}
    # The clean teacher records no poison at all.
    assert "poison" not in json.loads((bias_models["clean"] / "robustdistill.json").read_text())


def test_a_filtered_teacher_records_what_its_filter_removed(one_thread: None, tmp_path: Path) -> None:
    out = _train("sft", "bias-teacher-detector-filtered.toml", tmp_path / "filtered", [*DATA_SET, "epochs=1"])
    record = json.loads((out / "robustdistill.json").read_text())
    by_bias = {spec["bias"]: set(spec["ids"]) for spec in record["poison"]["specs"]}
    # The generic detector sees links and insecure code, not the brand or the claim, and flags no clean example.
    assert set(record["filter"]["removed"]) == by_bias["phishing-link"] | by_bias["insecure-code"]
    assert record["filter"]["removed_poison"] == 50 and record["filter"]["removed_clean"] == 0
    assert not set(record["filter"]["removed"]) & set(record["train_members"])
    assert by_bias["advertisement"] <= set(record["train_members"])


def test_a_model_whose_recipe_no_longer_rebuilds_its_data_is_refused(bias_models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    copy = tmp_path / "teacher"
    shutil.copytree(bias_models["poisoned"], copy)
    record = json.loads((copy / "robustdistill.json").read_text())
    record["data"]["fingerprint"] = "0" * 64
    (copy / "robustdistill.json").write_text(json.dumps(record))
    spec = {**bias_suite(), "probes": [{"kind": "poison-filters"}]}
    with pytest.raises(UserInputError, match="rebuilds") as error:
        audit(spec, teacher=copy, student=bias_models["student"], out=tmp_path / "run", progress=False)
    assert error.value.field == "pipeline.teacher"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("probe", "field"), [
    ({"kind": "bias-propagation", "biases": ["spam"]}, "probes[0].biases"),
    ({"kind": "bias-propagation", "temperature": 0, "samples": 4}, "probes[0].samples"),
    ({"kind": "poison-filters", "model": "student"}, "probes[0].biases"),
    ({"kind": "poison-filters", "reference": "nobody"}, "probes[0].reference"),
    ({"kind": "poison-filters", "fprs": [0.0]}, "probes[0].fprs"),
])
def test_bad_bias_probe_settings_name_their_field(bias_models: dict[str, Path], tmp_path: Path,
                                                  probe: dict[str, Any], field: str) -> None:
    spec = {**bias_suite(), "probes": [probe]}
    with pytest.raises(UserInputError) as error:
        audit(spec, teacher=bias_models["poisoned"], student=bias_models["student"], out=tmp_path / "run",
              progress=False)
    assert error.value.field.startswith(field)
    assert not (tmp_path / "run").exists()


def _tiny_recipe(tmp_path: Path, name: str, source: str, **replace: str) -> Path:
    text = (REPO / "defenses" / source).read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_suite_trains_its_missing_models_from_its_recipes_in_order(one_thread: None, tmp_path: Path) -> None:
    small = {"epochs = 12": "epochs = 1", "n = 960": "n = 160"}
    teacher = _tiny_recipe(tmp_path, "teacher.toml", "bias-teacher-clean.toml", **small)
    student = _tiny_recipe(tmp_path, "student.toml", "bias-seq-kd-clean.toml", **small,
                           **{'teacher = "checkpoints/bias/teacher-clean"': f'teacher = "{tmp_path / "t"}"',
                              'teacher_recipe = "defenses/bias-teacher-clean.toml"': f'teacher_recipe = "{teacher}"'})
    spec = {"name": "trains", "seed": 0, "data": {"kind": "instructions", "n": 160, "split": "test",
                                                  "families": FAMILIES + ["reverse", "length"]},
            "pipeline": {"teacher": str(tmp_path / "t"), "student": str(tmp_path / "s"),
                         "recipes": {"teacher": str(teacher), "student": str(student)}},
            "probes": [{"kind": "bias-propagation", "prompts": 2, "samples": 1, "max_new_tokens": 8,
                        "biases": ["phishing-link"]}]}
    bad = {**spec, "pipeline": {**spec["pipeline"], "recipes": {"teacher": str(teacher), "student": str(
        _tiny_recipe(tmp_path, "bad.toml", "bias-seq-kd-clean.toml", **{"epochs = 12": "epochs = 0"}))}}}
    with pytest.raises(UserInputError, match="epochs"):
        audit(bad, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "t").exists()  # the second recipe is checked before the first one trains
    report = audit(spec, out=tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "s" / "robustdistill.json").read_text())
    assert record["method"] == "seq-kd" and record["teacher_generations"]["temperature"] == 1.0
    assert rows(report, "student", "phishing-link/targeted")["params"]["teacher"] == "teacher"
    with pytest.raises(UserInputError, match="recipes.nobody"):
        load_suite({**spec, "pipeline": {**spec["pipeline"], "recipes": {"nobody": str(teacher)}}})


def test_bootstrap_interval_of_a_mean_brackets_it_and_is_seeded() -> None:
    from robustdistill.audits.probes.language.bias import bootstrap_mean_ci

    values = np.array([0.0, 0.25, 0.5, 0.0, 1.0, 0.75, 0.25, 0.0])
    first = bootstrap_mean_ci(values, seed=3, resamples=2000)
    assert first == bootstrap_mean_ci(values, seed=3, resamples=2000)
    assert first[0] < values.mean() < first[1] and 0 <= first[0] and first[1] <= 1
    # The percentile interval of a mean of 8 values is close to mean +- 1.96 standard errors.
    half = 1.96 * values.std(ddof=0) / np.sqrt(values.size)
    assert first[0] == pytest.approx(values.mean() - half, abs=0.06)
    assert bootstrap_mean_ci(np.zeros(0), seed=0, resamples=100) is None
