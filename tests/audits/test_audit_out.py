"""An audit's --out: a user's files are never overwritten or deleted, bad places are refused before any work, and a
run directory in use by one audit is refused to a second (issue 11, items 1 and 2). Real tiny digits models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from robustdistill.audits import audit
from robustdistill.cli import main
from robustdistill.errors import UserInputError

from test_audits_cli import write_suite  # the sibling test module's TOML writer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def suite(digits_pair: tuple[Path, Path], cheap_suite: Any) -> dict[str, Any]:
    teacher, student = digits_pair
    built = cheap_suite(teacher, student, samples=60, gates={"student.clean.accuracy": {"min": 0.0}})
    built["probes"] = [{"kind": "clean"}, {"kind": "attack", "attack": "fgsm"}]
    return built


def users_folder(root: Path) -> Path:
    """A folder with a user's own report.md, a plot and an artifact, named as an audit would name its files."""
    (root / "plots").mkdir(parents=True)
    (root / "artifacts").mkdir()
    (root / "report.md").write_text("my own notes\n")
    (root / "plots" / "accuracy_per_attack.png").write_bytes(b"\x89PNG my chart")
    (root / "artifacts" / "examples.npz").write_bytes(b"my data")
    return root


def test_an_existing_folder_robustdistill_did_not_make_is_refused_before_work(suite: dict[str, Any], tmp_path: Path,
                                                                               snapshot: Any) -> None:
    out = users_folder(tmp_path / "mine")
    before = snapshot(out)
    units: list[Any] = []
    with pytest.raises(UserInputError, match="not written by robustdistill") as refused:
        audit(suite, out=out, progress=False, on_unit=units.append)
    assert refused.value.field == "out"
    assert units == []  # refused before any probe ran
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["artifacts", "plots", "report.md"]


def test_the_cli_exits_2_with_one_line_and_writes_nothing(suite: dict[str, Any], tmp_path: Path, snapshot: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_suite(tmp_path / "suite.toml", suite)
    out = users_folder(tmp_path / "mine")
    before = snapshot(out)
    assert main(["-q", "audit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustdistill: error: out: ") and "Traceback" not in err[0]
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_an_out_that_cannot_be_created_exits_2_before_work(suite: dict[str, Any], tmp_path: Path, where: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_suite(tmp_path / "suite.toml", suite)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "run" if where == "under a file" else Path("/proc/robustdistill-test/run")
    assert main(["-q", "audit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "robustdistill: error: out: " in err and "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "suite.toml"]


def test_rerendering_keeps_a_users_files_in_the_run_directory(suite: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    audit(suite, out=out, progress=False)
    # The user adds their own plots (one named like the ROC plots an earlier render cleaned up) and notes.
    mine = {"plots/roc-my-attack.png": b"\x89PNG mine", "plots/holiday.png": b"\x89PNG beach", "notes.txt": b"keep"}
    for name, payload in mine.items():
        (out / name).write_bytes(payload)
    assert main(["-q", "report", str(out)]) == 0
    for name, payload in mine.items():
        assert (out / name).read_bytes() == payload, name
    # A resumed audit into the same folder leaves them alone too.
    audit(suite, out=out, resume=True, progress=False)
    for name, payload in mine.items():
        assert (out / name).read_bytes() == payload, name
    capsys.readouterr()


def test_report_never_overwrites_a_report_json_in_a_folder_robustdistill_did_not_make(
        suite: dict[str, Any], tmp_path: Path, snapshot: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    audit(suite, out=run, progress=False)
    mine = tmp_path / "mine"  # a user's folder with a copy of the results beside their own files
    mine.mkdir()
    (mine / "results.jsonl").write_bytes((run / "results.jsonl").read_bytes())
    (mine / "report.json").write_text('{"my": "edits"}')
    (mine / "notes.txt").write_text("mine")
    before = snapshot(mine)
    capsys.readouterr()
    assert main(["-q", "report", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustdistill: error: RUN_DIR: ")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["notes.txt", "report.json",
                                                                                  "results.jsonl"]


def test_the_marker_lists_what_the_audit_wrote(suite: dict[str, Any], tmp_path: Path) -> None:
    from robustdistill import ownership

    out = tmp_path / "run"
    audit(suite, out=out, progress=False)
    marker = ownership.read_marker(out)
    assert marker is not None and marker["kind"] == "audit" and len(marker["run_id"]) == 32
    assert set(marker["files"]) == set(ownership.files_under(out))
    assert {"results.jsonl", "report.json", "report.md", "report.html", "plots/accuracy_per_attack.png"} <= set(marker["files"])


def test_a_folder_written_by_an_earlier_version_still_resumes(suite: dict[str, Any], tmp_path: Path) -> None:
    from robustdistill import ownership

    out = tmp_path / "run"
    audit(suite, out=out, progress=False)
    (out / ownership.MARKER).unlink()  # what an earlier version left: its own files, no marker
    (out / ownership.LOCK).unlink()
    report = audit(suite, out=out, resume=True, progress=False)
    assert report.complete and ownership.read_marker(out) is not None
    # ...but one with a file an audit never writes is not provably robustdistill's: refused, not touched.
    (out / ownership.MARKER).unlink()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(UserInputError, match="not written by robustdistill"):
        audit(suite, out=out, resume=True, progress=False)
    assert (out / "thesis.tex").read_text() == "precious"


def test_a_second_audit_into_a_run_directory_in_use_exits_2_naming_the_holder(suite: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    path = write_suite(tmp_path / "suite.toml", suite)
    out = tmp_path / "run"
    stored, go_on = threading.Event(), threading.Event()

    def hold(record: dict[str, Any]) -> None:  # the first audit pauses after its first stored unit
        stored.set()
        go_on.wait(timeout=300)

    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(audit(suite, out=out, progress=False, on_unit=hold)))
    first.start()
    try:
        assert stored.wait(timeout=300)
        lines_before = (out / "results.jsonl").read_text()
        for extra in (["--resume"], []):
            second = subprocess.run([sys.executable, "-m", "robustdistill", "-q", "audit", str(path), "--out", str(out),
                                     *extra], capture_output=True, text=True, timeout=300, cwd=REPO)
            assert second.returncode == 2, second.stderr
            assert "in use by robustdistill audit" in second.stderr
            assert f"pid {os.getpid()}" in second.stderr and socket.gethostname() in second.stderr
            assert "Traceback" not in second.stderr
            assert (out / "results.jsonl").read_text() == lines_before  # nothing interleaved
    finally:
        go_on.set()
        first.join(timeout=300)
    assert results and results[0].complete
    manifests = [line for line in (out / "results.jsonl").read_text().splitlines() if '"type": "manifest"' in line]
    assert len(manifests) == 1
    # Once the first audit is done the lock is free again.
    from robustdistill import ownership

    assert ownership.holder(out) is None
