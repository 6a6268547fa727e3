"""Suite schema: presets expand, shipped suites load, and every bad input names its field (no models needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.audits import PROBES, load_suite
from robustdistill.stats import paired_excess, wilson
from robustdistill.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]


def base(**extra: Any) -> dict[str, Any]:
    suite: dict[str, Any] = {
        "name": "t",
        "pipeline": {"teacher": "a", "student": "b"},
        "threat_model": {"norm": "linf", "eps": 0.125},
        "probes": [{"kind": "clean"}, {"kind": "attack", "attack": "pgd", "params": {"steps": 5}}],
    }
    suite.update(extra)
    return suite


def field_of(suite: Any, **kwargs: Any) -> str:
    with pytest.raises(UserInputError) as info:
        load_suite(suite, **kwargs)
    return info.value.field


def test_digits_preset_expands_with_its_threat_model() -> None:
    suite = load_suite(REPO / "audits" / "digits.toml")
    assert suite.threat_model.norm == "linf" and suite.threat_model.eps == 0.125
    assert suite.samples == 359 and suite.split == "test"
    names = [p.name for p in suite.probes]
    assert names == ["clean", "fgsm", "pgd-20", "cw-linf", "autoattack", "curve", "transfer", "agreement", "masking"]
    pgd = suite.probe("pgd-20")
    assert pgd.params()["steps"] == 20 and pgd.params()["alpha"] == 0.125 / 4 and pgd.params()["restarts"] == 1
    auto = suite.probe("autoattack").params()
    assert auto["steps"] == 100 and auto["n_queries"] == 5000 and auto["eps"] == 0.125
    assert [g.metric for g in suite.gates] == ["student.clean.accuracy", "student.autoattack.robust_accuracy",
                                               "retention.autoattack"]
    assert Path(suite.pipeline.teacher).name == "digits-standard"


@pytest.mark.parametrize("name", ["digits", "cifar10", "demo"])
def test_shipped_suites_validate(name: str) -> None:
    suite = load_suite(REPO / "audits" / f"{name}.toml")
    assert suite.probes and suite.gates
    again = load_suite(suite.to_dict())
    assert again.to_dict() == suite.to_dict()


@pytest.mark.parametrize("preset", ["digits-linf", "cifar10-linf", "cifar10-l2"])
def test_presets_expand(preset: str) -> None:
    suite = load_suite(base(threat_model=None, probes=[{"use": str(REPO / "attacks" / f"{preset}.toml")}]))
    kinds = {p.kind for p in suite.probes}
    assert {"clean", "attack", "curve", "transfer", "agreement", "masking"} <= kinds


def test_relative_paths_resolve_against_the_suite_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "p.toml").write_text('[threat_model]\nnorm = "linf"\neps = 0.1\n[[probes]]\nkind = "clean"\n')
    (tmp_path / "suites" / "s.toml").write_text('[pipeline]\nteacher = "t"\nstudent = "s"\n[[probes]]\nuse = "attacks/p.toml"\n')
    monkeypatch.chdir(REPO)
    suite = load_suite(tmp_path / "suites" / "s.toml")
    assert suite.name == "s" and suite.threat_model.eps == 0.1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"samples": 0}, "samples"),
        ({"seed": "x"}, "seed"),
        ({"name": "a/b"}, "name"),
        ({"threat_model": {"norm": "l3", "eps": 0.1}}, "threat_model.norm"),
        ({"threat_model": {"norm": "linf", "eps": -1}}, "threat_model.eps"),
        ({"threat_model": None}, "threat_model"),
        ({"pipeline": {"teacher": "a", "studnt": "b"}}, "pipeline.studnt"),
        ({"pipeline": {"extra": {"Bad-Name": "c"}}}, "pipeline.extra.Bad-Name"),
        ({"data": {"kind": "mnist"}}, "data.kind"),
        ({"data": {"kind": "digits", "split": "holdout"}}, "data.split"),
        ({"probes": []}, "probes"),
        ({"examples": "nope"}, "examples"),
    ],
)
def test_bad_suite_names_the_field(change: dict[str, Any], field: str) -> None:
    assert field_of(base(**change)) == field


@pytest.mark.parametrize(
    ("probe", "field"),
    [
        ({"kind": "atack", "attack": "pgd"}, "probes[2].kind"),
        ({"attack": "pgd"}, "probes[2].kind"),
        ({"kind": "attack"}, "probes[2].attack"),
        ({"kind": "attack", "attack": "pdg"}, "probes[2].attack"),
        ({"kind": "attack", "attack": "pgd", "params": {"steps": 0}}, "probes[2].params.steps"),
        ({"kind": "attack", "attack": "pgd", "params": {"stepz": 3}}, "probes[2].params.stepz"),
        ({"kind": "attack", "attack": "pgd", "eps": 0.1}, "probes[2].eps"),
        ({"kind": "attack", "attack": "cw-l2"}, "probes[2].attack"),
        ({"kind": "curve", "eps": [0.1, -0.2]}, "probes[2].eps[1]"),
        ({"kind": "curve", "eps": []}, "probes[2].eps"),
        ({"kind": "masking", "scales": [0.0]}, "probes[2].scales[0]"),
        ({"kind": "clean", "name": "Has.Dot"}, "probes[2].name"),
        ({"kind": "clean"}, "probes[2].name"),  # a second probe named "clean"
        ({"use": "attacks/none.toml"}, "probes[2].use"),
        ({"use": "attacks/digits-linf.toml", "kind": "clean"}, "probes[2].kind"),
    ],
)
def test_bad_probe_names_the_field(probe: dict[str, Any], field: str) -> None:
    suite = base()
    suite["probes"] = [*suite["probes"], probe]
    assert field_of(suite) == field


@pytest.mark.parametrize(
    ("gate", "spec", "problem"),
    [
        ("student.pgd.robust_acc", {"min": 0.5}, "never produces 'robust_acc'"),
        ("student.nope.robust_accuracy", {"min": 0.5}, "no probe named"),
        ("robust_accuracy", {"min": 0.5}, "not a metric path"),
        ("pupil.pgd.robust_accuracy", {"min": 0.5}, "unknown model"),
        ("student.pgd.robust_accuracy", {}, "neither min nor max"),
        ("student.pgd.robust_accuracy", {"minimum": 0.5}, "unknown key"),
        ("student.pgd.robust_accuracy", {"min": "high"}, "valid number"),
        ("student.pgd.robust_accuracy", 0.5, "must be a table"),
        ("retention.fgsm", {"min": 0.8}, "no clean or attack probe"),
        ("teacher.retention.pgd", {"min": 0.8}, "the teacher has none"),
    ],
)
def test_bad_gate_names_the_gate(gate: str, spec: Any, problem: str) -> None:
    with pytest.raises(UserInputError) as info:
        load_suite(base(gates={gate: spec}))
    assert info.value.field.startswith("gates.") and gate in info.value.field
    assert problem in str(info.value)


def test_gate_forms() -> None:
    suite = load_suite(base(gates={"student.pgd.robust_accuracy": {"min": 0.5, "max": 0.9}, "retention.pgd": {"min": 0.8}}))
    ops = [(g.metric, g.op, g.threshold) for g in suite.gates]
    assert ops == [("student.pgd.robust_accuracy", ">=", 0.5), ("student.pgd.robust_accuracy", "<=", 0.9),
                   ("retention.pgd", ">=", 0.8)]


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    assert field_of(bad) == "suite"
    assert field_of(tmp_path / "missing.toml") == "suite"


def test_overrides_replace_pipeline_samples_device() -> None:
    suite = load_suite(base(), teacher="x", student="y", samples=7, device="cpu")
    assert (suite.pipeline.teacher, suite.pipeline.student, suite.samples, suite.device) == ("x", "y", 7, "cpu")
    assert field_of(base(), samples=0) == "--samples"


def test_l2_attack_needs_its_own_eps_in_an_linf_suite() -> None:
    probe = {"kind": "attack", "attack": "cw-l2", "params": {"eps": 1.0, "steps": 5, "binary_search_steps": 2}}
    suite = load_suite(base(probes=[probe]))
    assert suite.probes[0].params()["norm"] == "l2"


def test_every_probe_kind_is_registered() -> None:
    assert set(PROBES.available()) == {"clean", "attack", "curve", "transfer", "retention", "agreement", "masking",
                                       "mia-loss", "mia-confidence", "mia-lira", "size",
                                       "refusal", "task-accuracy", "gcg", "gcg-transfer", "alo-asr", "lm-mia",
                                       "bias-propagation", "poison-filters", "generation-quality", "diffusion-mia",
                                       "class-forgetting", "backdoor-removal"}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), data=st.data())
def test_wilson_interval_contains_the_estimate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert hi - lo <= 1.0 and (hi - lo) < 2 * 1.96 * math.sqrt(0.25 / n) + 1e-9 + 4 / n


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_paired_excess_is_antisymmetric_and_never_flags_identical(pairs: list[tuple[bool, bool]]) -> None:
    import numpy as np

    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    assert not paired_excess(a, a, tolerance=0.0)[0]
    flagged_ab, diff_ab, _ = paired_excess(a, b, tolerance=0.0)
    flagged_ba, diff_ba, _ = paired_excess(b, a, tolerance=0.0)
    assert math.isclose(diff_ab, -diff_ba, abs_tol=1e-12) and not (flagged_ab and flagged_ba)


@settings(max_examples=30, deadline=None)
@given(eps=st.floats(0.001, 0.5), seed=st.integers(0, 2**31), samples=st.one_of(st.none(), st.integers(1, 10_000)))
def test_suite_round_trips(eps: float, seed: int, samples: int | None) -> None:
    raw = base(threat_model={"norm": "linf", "eps": eps}, seed=seed, samples=samples)
    if samples is None:
        del raw["samples"]
    suite = load_suite(raw)
    assert load_suite(suite.to_dict()).to_dict() == suite.to_dict()
    assert suite.threat_model.eps == eps and suite.seed == seed and suite.samples == samples
