"""The runner on real tiny digits models: report schema, statistics, resume after a kill, in-memory models."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robustdistill import attacks
from robustdistill.audits import audit, build_report
from robustdistill.audits.probes import PROBES
from robustdistill.audits.runner import state_dict_sha256
from robustdistill.errors import UserInputError
from robustdistill.models import checkpoint_sha256, load_model


ROW_KEYS = {"probe", "model", "metric", "value", "ci95", "n", "params"}


@pytest.fixture(scope="module")
def cheap_run(digits_pair: tuple[Path, Path], cheap_suite: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    teacher, student = digits_pair
    out = tmp_path_factory.mktemp("cheap") / "run"
    return audit(cheap_suite(teacher, student), out=out, progress=False), out


def test_report_json_has_the_design_schema(cheap_run: tuple[Any, Path], digits_pair: tuple[Path, Path]) -> None:
    report, out = cheap_run
    on_disk = json.loads((out / "report.json").read_text())
    assert list(on_disk) == ["suite", "manifest", "results", "gates", "flags", "verdict", "sections"]
    # Each probe of the suite is in exactly one report section, the one its probe class names.
    # Retention, derived from the clean and attack units, is listed because the report has its rows.
    listed = [name for section in on_disk["sections"] for name in section["probes"]]
    assert any(row["probe"] == "retention" for row in on_disk["results"])
    assert sorted(listed) == sorted([p["name"] for p in on_disk["suite"]["probes"]] + ["retention"])
    kinds = {p["name"]: p["kind"] for p in on_disk["suite"]["probes"]} | {"retention": "retention"}
    for section in on_disk["sections"]:
        for name in section["probes"]:
            kind = kinds[name]
            assert (PROBES.get(kind).group, PROBES.get(kind).family) == (section["group"], section["family"])
    assert on_disk["manifest"]["families"] == {"teacher": "classifier", "student": "classifier"}
    assert on_disk["verdict"]["passed"] is report.passed and on_disk["verdict"]["summary"] in report.summary()
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    manifest = on_disk["manifest"]
    for key in ("robustdistill", "torch", "git", "seed", "checkpoints", "started", "finished"):
        assert key in manifest
    teacher, student = digits_pair
    assert manifest["checkpoints"]["teacher"] == {"path": str(teacher), "sha256": checkpoint_sha256(teacher)}
    assert manifest["checkpoints"]["student"]["sha256"] == checkpoint_sha256(student)
    for row in on_disk["results"]:
        assert set(row) == ROW_KEYS
        assert re.fullmatch(r"[a-z][a-z0-9_]*", row["metric"]), row["metric"]
        assert row["model"] in ("teacher", "student")
    for gate in on_disk["gates"]:
        assert {"metric", "op", "threshold", "value", "passed"} <= set(gate)
    kinds = {r["probe"] for r in on_disk["results"]}
    assert {"clean", "fgsm", "pgd-10", "cw-linf", "curve", "transfer", "agreement", "retention", "masking"} <= kinds
    assert report.results.shape[0] == len(on_disk["results"]) and list(report.results.columns) == list(ROW_KEYS_ORDER)
    assert (out / "results.jsonl").is_file()


ROW_KEYS_ORDER = ("probe", "model", "metric", "value", "ci95", "n", "params")


def test_every_probe_yields_teacher_and_student_rows(cheap_run: tuple[Any, Path]) -> None:
    report, _ = cheap_run
    for probe in ("clean", "fgsm", "pgd-10", "cw-linf", "curve", "transfer", "agreement", "masking"):
        assert {r["model"] for r in report.rows if r["probe"] == probe} == {"teacher", "student"}, probe
    retention = [r for r in report.rows if r["probe"] == "retention"]
    assert {r["params"]["of"] for r in retention} == {"clean", "fgsm", "pgd-10", "cw-linf"}


def test_intervals_contain_the_estimate(cheap_run: tuple[Any, Path]) -> None:
    report, _ = cheap_run
    with_ci = [r for r in report.rows if r["ci95"] is not None]
    assert len(with_ci) > 20
    for row in with_ci:
        lo, hi = row["ci95"]
        assert lo <= row["value"] <= hi, row
        if row["metric"] != "robust_accuracy_retention" and row["metric"] != "accuracy_retention":
            assert 0.0 <= lo <= hi <= 1.0, row
        assert row["n"] > 0


def test_robust_accuracy_never_exceeds_clean(cheap_run: tuple[Any, Path]) -> None:
    report, _ = cheap_run
    for role in ("teacher", "student"):
        clean = report.value(role, "clean", "accuracy")
        robust = [r for r in report.rows if r["model"] == role and r["metric"].endswith("robust_accuracy")]
        robust += [r for r in report.rows if r["model"] == role and r["metric"] == "transfer_accuracy"]
        assert len(robust) > 10
        for row in robust:
            assert row["value"] <= clean + 1e-12, row
        curve = sorted((r["params"]["eps"], r["value"]) for r in report.rows if r["probe"] == "curve" and r["model"] == role)
        assert curve[0] == (0.0, clean)
        assert curve[-1][1] <= curve[1][1]


def test_a_clean_model_is_not_flagged(cheap_run: tuple[Any, Path]) -> None:
    """No false alarms: every masking check runs on a standard teacher and its KD student and none fires."""
    report, _ = cheap_run
    assert report.flags == [] and report.untrusted == []
    assert {r["metric"] for r in report.rows if r["probe"] == "masking"} >= {"pgd_restarts_robust_accuracy", "worst_case_robust_accuracy"}


def test_identical_attack_and_seed_on_teacher_and_student(cheap_run: tuple[Any, Path]) -> None:
    report, _ = cheap_run
    for probe in ("fgsm", "pgd-10", "cw-linf"):
        params = [r["params"] for r in report.rows if r["probe"] == probe and r["metric"] == "robust_accuracy"]
        assert len(params) == 2 and params[0] == params[1] and params[0]["seed"] == 0


def test_examples_artifact(cheap_run: tuple[Any, Path]) -> None:
    _, out = cheap_run
    with np.load(out / "artifacts" / "examples.npz") as npz:
        k = npz["clean"].shape[0]
        assert 8 <= k <= 16 and npz["clean"].shape[1:] == (1, 8, 8) and npz["clean"].dtype == np.float32
        assert str(npz["attack"]) == "cw-linf"  # the strongest attack of the cheap suite
        for role in ("teacher", "student"):
            adv = npz[f"adv_{role}"]
            assert adv.shape == npz["clean"].shape and adv.dtype == np.float32
            assert np.abs(adv - npz["clean"]).max() <= 0.125 + 1e-6
            assert npz[f"pred_clean_{role}"].shape == npz[f"pred_adv_{role}"].shape == npz["labels"].shape == (k,)


def test_resume_after_a_kill_gives_the_same_report(digits_pair: tuple[Path, Path], cheap_run: tuple[Any, Path],
                                                   cheap_suite: Any, tmp_path: Path) -> None:
    teacher, student = digits_pair
    uninterrupted, _ = cheap_run
    out = tmp_path / "killed"
    finished: list[str] = []

    def kill_after_five(record: dict[str, Any]) -> None:
        finished.append(record["key"])
        if len(finished) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        audit(cheap_suite(teacher, student), out=out, progress=False, on_unit=kill_after_five)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 5 and not (out / "report.json").exists()
    # A kill in the middle of a write leaves half a line: it must be ignored, not break the resume.
    with open(out / "results.jsonl", "a") as handle:
        handle.write('{"type": "unit", "key": "half')
    with pytest.raises(UserInputError, match="--resume"):
        audit(cheap_suite(teacher, student), out=out, progress=False)
    rerun: list[str] = []
    resumed = audit(cheap_suite(teacher, student), out=out, resume=True, progress=False,
                    on_unit=lambda r: rerun.append(r["key"]))
    assert not set(rerun) & set(finished)
    assert len(rerun) + len(finished) == len(json.loads((out / "results.jsonl").read_text().splitlines()[0])["plan"])
    assert resumed.rows == uninterrupted.rows
    assert resumed.gates == uninterrupted.gates and resumed.flags == uninterrupted.flags
    first = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert resumed.manifest["started"] == first["started"]
    # Resuming a finished run recomputes nothing, and `report` rebuilds the same results.
    again: list[str] = []
    audit(cheap_suite(teacher, student), out=out, resume=True, progress=False, on_unit=lambda r: again.append(r["key"]))
    assert again == []
    assert build_report(out).rows == uninterrupted.rows


class UserNet(nn.Module):
    """A notebook user's own model: not a robustdistill Classifier, just an nn.Module taking [0, 1] pixels."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_in_memory_modules_audit_like_checkpoints(digits_pair: tuple[Path, Path], cheap_run: tuple[Any, Path],
                                                 cheap_suite: Any, tmp_path: Path) -> None:
    teacher, student = digits_pair
    from_disk, _ = cheap_run
    module = UserNet(load_model(student))
    module.train()
    suite = cheap_suite(teacher, None)
    report = audit(suite, student=module, out=tmp_path / "mem", progress=False)
    assert module.training  # the caller's mode is restored
    entry = report.manifest["checkpoints"]["student"]
    assert entry["path"] is None and entry["sha256"] == state_dict_sha256(module)
    assert report.manifest["checkpoints"]["teacher"]["sha256"] == checkpoint_sha256(teacher)
    assert report.rows == from_disk.rows  # same weights, same numbers


def test_in_memory_model_of_the_wrong_shape_is_bad_input(digits_pair: tuple[Path, Path], cheap_suite: Any,
                                                         tmp_path: Path) -> None:
    teacher, _ = digits_pair
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(UserInputError) as info:
        audit(cheap_suite(teacher, None), student=wrong, out=tmp_path / "wrong", progress=False)
    assert info.value.field == "pipeline.student" and "3 outputs" in str(info.value)
    assert not (tmp_path / "wrong").exists()


def test_every_registered_attack_runs_in_an_audit(digits_pair: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, student = digits_pair
    small = {
        "fgsm": {}, "pgd": {"steps": 5}, "cw-linf": {"steps": 5}, "apgd-ce": {"steps": 10}, "apgd-t": {"steps": 10},
        "fab-t": {"steps": 10, "n_target_classes": 2}, "square": {"n_queries": 50},
        "autoattack": {"steps": 10, "n_queries": 50, "n_target_classes": 2},
        "cw-l2": {"eps": 1.0, "steps": 20, "binary_search_steps": 3},
    }
    missing = set(attacks.available()) - set(small)
    assert not missing, f"add {missing} to this test (and to the presets)"
    probes = [{"kind": "clean"}] + [{"kind": "attack", "attack": a, "params": p} for a, p in small.items()]
    report = audit({"name": "all", "samples": 40, "pipeline": {"teacher": str(teacher), "student": str(student)},
                    "threat_model": {"norm": "linf", "eps": 0.125}, "probes": probes}, out=tmp_path / "all",
                   progress=False)
    for role in ("teacher", "student"):
        clean = report.value(role, "clean", "accuracy")
        for name in small:
            assert report.value(role, name, "robust_accuracy") <= clean
    assert report.value("student", "cw-l2", "median_l2") is None or report.value("student", "cw-l2", "median_l2") <= 1.0
    stages = {r["metric"] for r in report.rows if r["probe"] == "autoattack"}
    assert {"robust_accuracy_after_apgd_ce", "robust_accuracy_after_square"} <= stages
