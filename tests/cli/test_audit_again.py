"""Auditing into an --out that holds an earlier audit (issue 12): the refusal names --resume and --overwrite;
--overwrite replaces only what robustdistill wrote; --resume with other checkpoints is refused (exit 2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from robustdistill.cli import main

SUITE = 'name = "again"\nsamples = 40\n[data]\nkind = "digits"\n[[probes]]\nkind = "clean"\n'


@pytest.fixture(scope="module")
def world(untrained_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    suite = tmp_path_factory.mktemp("again") / "suite.toml"
    suite.write_text(SUITE)
    return {"suite": str(suite), **untrained_models}


def _audit(world: dict[str, str], out: Path, *extra: str, student: str = "student") -> list[str]:
    return ["-q", "audit", world["suite"], "--teacher", world["teacher"], "--student", world[student],
            "--out", str(out), *extra]


def _manifests(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [line for line in lines if line.get("type") == "manifest"]


def _refused_again(world: dict[str, str], out: Path, capsys: pytest.CaptureFixture[str],
                   snapshot: Callable[[Path], dict], *extra: str, student: str = "student") -> str:
    """Audit into ``out``, then again with ``extra``: exit 2 and nothing changed in ``out``; the error text."""
    assert main(_audit(world, out)) in (0, 1)
    before = snapshot(out)
    capsys.readouterr()
    assert main(_audit(world, out, *extra, student=student)) == 2
    assert snapshot(out) == before
    return capsys.readouterr().err


def test_a_second_audit_is_refused_naming_resume_and_overwrite(world: dict[str, str], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               snapshot: Callable[[Path], dict]) -> None:
    err = _refused_again(world, tmp_path / "run", capsys, snapshot)
    assert "--resume" in err and "--overwrite" in err, err


def test_overwrite_replaces_only_what_robustdistill_wrote(world: dict[str, str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(_audit(world, out)) in (0, 1)
    first = _manifests(out)[0]["started"]
    (out / "my-notes.txt").write_text("mine")  # a user's file inside the run folder
    (out / "plots" / "mine.png").write_bytes(b"not robustdistill's")
    assert main(_audit(world, out, "--overwrite", student="other")) in (0, 1)
    manifests = _manifests(out)
    assert len(manifests) == 1, "the earlier audit's records are gone, not continued"
    assert manifests[0]["started"] >= first
    assert manifests[0]["checkpoints"]["student"]["path"] == world["other"]
    assert (out / "my-notes.txt").read_text() == "mine"
    assert (out / "plots" / "mine.png").read_bytes() == b"not robustdistill's"
    report = json.loads((out / "report.json").read_text())
    assert report["manifest"]["checkpoints"]["student"]["path"] == world["other"]


def test_overwrite_with_bad_input_keeps_the_earlier_audit(world: dict[str, str], tmp_path: Path,
                                                          snapshot: Callable[[Path], dict]) -> None:
    out = tmp_path / "run"
    assert main(_audit(world, out)) in (0, 1)
    before = snapshot(out)
    missing = ["-q", "audit", world["suite"], "--teacher", world["teacher"], "--student", str(tmp_path / "nope"),
               "--out", str(out), "--overwrite"]
    assert main(missing) == 2
    assert snapshot(out) == before


def test_overwrite_never_touches_a_folder_robustdistill_did_not_write(world: dict[str, str], tmp_path: Path,
                                                                     snapshot: Callable[[Path], dict],
                                                                     plant_users_files: Callable) -> None:
    out = tmp_path / "users"
    plant_users_files(out, {"results.jsonl": "{}\n", "report.json": "{}"})
    before = snapshot(out)
    assert main(_audit(world, out, "--overwrite")) == 2
    assert snapshot(out) == before


def test_resume_with_other_checkpoints_is_refused(world: dict[str, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  snapshot: Callable[[Path], dict]) -> None:
    out = tmp_path / "run"
    err = _refused_again(world, out, capsys, snapshot, "--resume", student="other")  # nothing started over
    assert "resume" in err and "student" in err and "--overwrite" in err, err
    assert main(_audit(world, out, "--resume")) in (0, 1)  # the same checkpoints still resume
    assert len(_manifests(out)) == 2


def test_resume_and_overwrite_exclude_each_other(world: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main(_audit(world, tmp_path / "run", "--resume", "--overwrite"))
    assert stop.value.code == 2
