"""`robustdistill demo --out`: checked before any training, a user's files are never deleted, and a quick demo has
its own report folder (issue 11, items 1 and 2)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import pytest

from robustdistill.cli import main
from robustdistill.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the demo reads audits/ and defenses/ relative to the repository root


@pytest.mark.parametrize("pipeline", ["kd-student", "privacy"])
def test_a_users_folder_inside_the_demo_out_is_refused_before_any_training(
        tmp_path: Path, pipeline: str, snapshot: Any, plant_users_files: Any) -> None:
    from robustdistill.demo import run_demo

    out = tmp_path / "reports"
    plant_users_files(out / pipeline, {"notes.txt": "mine"})
    before = snapshot(out)
    with pytest.raises(UserInputError, match="not written by robustdistill"):
        run_demo(out, quick=True, checkpoints=tmp_path / "checkpoints")
    assert snapshot(out) == before
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained
    assert sorted(p.name for p in out.iterdir()) == [pipeline]


def test_a_checkpoints_folder_robustdistill_did_not_make_is_refused_before_any_training(
        tmp_path: Path, snapshot: Any, plant_users_files: Any) -> None:
    from robustdistill.demo import run_demo

    checkpoints = tmp_path / "my-models"
    before = plant_users_files(checkpoints, {"ledger.json": '{"experiment": "mine"}', "notes.txt": "mine"})
    with pytest.raises(UserInputError, match="not written by robustdistill"):
        run_demo(tmp_path / "reports", quick=True, checkpoints=checkpoints)
    assert snapshot(checkpoints) == before and not (tmp_path / "reports").exists()


def test_a_quick_demo_never_writes_over_a_full_demos_reports(tmp_path: Path, snapshot: Any) -> None:
    from robustdistill.demo import run_demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "index.html").write_text("<p>the full demo's index</p>")
    # What a full demo leaves (robustdistill.ownership's marker format, written out so the test reads plainly).
    (out / ".robustdistill.json").write_text(json.dumps(
        {"tool": "robustdistill", "kind": "demo", "run_id": "0" * 32, "created": "2026-01-01T00:00:00+00:00",
         "files": ["index.html"]}))
    before = snapshot(out)
    with pytest.raises(UserInputError, match="holds a robustdistill demo, not a demo-quick"):
        run_demo(out, quick=True, checkpoints=tmp_path / "checkpoints")
    assert snapshot(out) == before and not (tmp_path / "checkpoints").exists()


def test_a_users_index_in_a_demo_folder_is_refused_before_any_training(tmp_path: Path) -> None:
    from robustdistill.demo import run_demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "index.html").write_text("<p>my own index</p>")  # not in the marker's list: a user's file
    (out / ".robustdistill.json").write_text(json.dumps(
        {"tool": "robustdistill", "kind": "demo-quick", "run_id": "0" * 32, "created": "2026-01-01T00:00:00+00:00",
         "files": []}))
    with pytest.raises(UserInputError, match="index.html exists and was not written by robustdistill"):
        run_demo(out, quick=True, checkpoints=tmp_path / "checkpoints")
    assert (out / "index.html").read_text() == "<p>my own index</p>"
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was trained


@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_the_cli_refuses_an_unusable_out_before_training(tmp_path: Path, where: str, snapshot: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("x")
    out = {"a file": tmp_path / "a-file", "under a file": tmp_path / "a-file" / "reports",
           "under /proc": Path("/proc/robustdistill-test/reports")}[where]
    ledgers = snapshot(REPO / "checkpoints") if (REPO / "checkpoints").is_dir() else {}
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustdistill: error: out: ")
    assert (tmp_path / "a-file").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert (snapshot(REPO / "checkpoints") if (REPO / "checkpoints").is_dir() else {}) == ledgers  # nothing trained


def test_a_companion_teacher_folder_with_a_users_files_is_not_deleted(tmp_path: Path, snapshot: Any,
                                                                      plant_users_files: Any) -> None:
    """The demo retrains a companion teacher whose sha256 changed; it removes only a checkpoint robustdistill wrote."""
    from robustdistill.demo import MODELS, _recipe_key, _train_or_reuse

    model = next(m for m in MODELS if m.name == "defensive-distillation-student")
    overrides = [*model.overrides, "epochs=1", "lr_milestones=[]", "val_robust=false"]
    checkpoints = tmp_path / "checkpoints"
    companion = checkpoints / "defensive-distillation-student-teacher"
    plant_users_files(companion, {"config.json": '{"format": "robustdistill.classifier"}', "my-results.csv": "mine"})
    ledger = {companion.name: {"recipe": _recipe_key(model, overrides), "sha256": "0" * 64}}
    with pytest.raises(UserInputError, match="not a checkpoint directory robustdistill wrote"):
        _train_or_reuse(model, overrides, checkpoints, ledger)
    assert snapshot(companion) == {"config.json": b'{"format": "robustdistill.classifier"}', "my-results.csv": b"mine"}
    assert not (checkpoints / model.name).exists()


@pytest.mark.slow
def test_the_quick_demo_has_its_own_folder_and_keeps_a_users_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole quick demo (minutes on 2 cores) in a scratch copy of the repository layout, run twice."""
    from robustdistill.demo import run_demo

    for name in ("audits", "attacks", "defenses"):
        os.symlink(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "reports" / "demo"
    full.mkdir(parents=True)
    (full / "index.html").write_text("<p>the full demo's index</p>")
    result = run_demo(quick=True)
    assert result.index == Path("reports/demo-quick/index.html") and result.index.is_file()
    assert (full / "index.html").read_text() == "<p>the full demo's index</p>"  # untouched
    quick = tmp_path / "reports" / "demo-quick"
    mine = {"notes.txt": b"mine", "kd-student/my-plot.png": b"\x89PNG", "privacy/plots/roc-mine.png": b"\x89PNG",
            "kd-student/plots/roc-mine.png": b"\x89PNG"}
    for name, payload in mine.items():
        (quick / name).write_bytes(payload)
    # A second run reuses the checkpoints and audits (sha256 verified) and leaves the user's files alone.
    again = run_demo(quick=True)
    assert again.table == result.table
    for name, payload in mine.items():
        assert (quick / name).read_bytes() == payload, name


def test_demo_help_states_the_quick_runs_test_points(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    samples = tomllib.loads((REPO / "audits" / "demo-quick.toml").read_text())["samples"]
    assert f"--quick a smoke run: few epochs, {samples} test points" in text


def test_the_demo_table_marks_a_reduced_autoattack(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The demo's AutoAttack runs Square with 1000 queries: its column and note say it is reduced (issue 12)."""
    import robustdistill.demo as demo
    from robustdistill.attacks import ATTACKS

    params = {"attack": "autoattack", **{k: v.default for k, v in inspect.signature(ATTACKS.get("autoattack")).parameters.items()
                                          if v.default is not inspect.Parameter.empty}}
    rows = [{"model": "student", "probe": "clean", "metric": "accuracy", "value": 0.9, "params": {}},
            {"model": "student", "probe": "autoattack", "metric": "robust_accuracy", "value": 0.1,
             "params": {**params, "n_queries": 1000}}]
    headline = demo._headline(type("R", (), {"rows": rows})())
    assert headline["autoattack"] == 0.1 and "Square queries 1000 (official 5000)" in headline["autoattack_reduced"]
    rows[1]["params"] = params  # the standard settings: not reduced
    assert demo._headline(type("R", (), {"rows": rows})())["autoattack_reduced"] == ""

    table = [{"student": "kd-student", "passed": False, "untrusted": [], **headline}]
    monkeypatch.setattr(demo, "run_demo",
                        lambda out, quick, device=None: demo.DemoResult(tmp_path / "index.html", table=table))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "AutoAttack*" in printed and "* reduced AutoAttack: Square queries 1000 (official 5000)" in printed
