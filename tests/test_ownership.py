"""robustdistill.ownership on its own: what a marker lets robustdistill remove, and what a lock refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from robustdistill import ownership
from robustdistill.errors import UserInputError


def test_only_listed_files_are_removed_and_a_users_files_stay(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ownership.adopt(run, "audit")
    (run / "plots").mkdir()
    for name in ("report.md", "plots/a.png", "plots/mine.png", "notes.txt"):
        (run / name).write_text(name)
    ownership.record(run, [run / "report.md", run / "plots" / "a.png"])
    assert ownership.owns(run, run / "plots" / "a.png") and not ownership.owns(run, run / "plots" / "mine.png")
    assert ownership.remove_owned(run, [run / "plots" / "a.png", run / "plots" / "mine.png"]) == ["plots/a.png"]
    assert ownership.dispose(run) is False  # the user's files keep the folder
    assert ownership.files_under(run) == ["notes.txt", "plots/mine.png"]


def test_a_forged_marker_cannot_reach_outside_its_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(elsewhere, run / "plots")
    marker = {"tool": "robustdistill", "kind": "audit", "run_id": "x", "files": ["plots/precious.txt"]}
    (run / ownership.MARKER).write_text(json.dumps(marker))
    ownership.remove_owned(run)
    assert (elsewhere / "precious.txt").read_text() == "keep"
    (run / ownership.MARKER).write_text(json.dumps({**marker, "files": ["../elsewhere/precious.txt"]}))
    assert ownership.read_marker(run) is None  # not a marker robustdistill wrote: nothing is removed by it
    assert ownership.remove_owned(run) == [] and (elsewhere / "precious.txt").read_text() == "keep"


def test_a_lock_file_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "users-file.txt"
    target.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(target, run / ownership.LOCK)
    with pytest.raises(UserInputError, match="cannot lock"):
        ownership.acquire(run, "test")
    assert target.read_text() == "keep"


def test_a_lock_is_exclusive_until_released_and_names_its_holder(tmp_path: Path) -> None:
    run = tmp_path / "new" / "run"
    lock = ownership.acquire(run, "robustdistill audit x")
    assert "robustdistill audit x (pid" in str(ownership.holder(run))
    with pytest.raises(UserInputError, match=r"in use by robustdistill audit x \(pid \d+ on .+, started "):
        ownership.acquire(run, "another")
    lock.undo()  # nothing was written: the folders made for the lock go again
    assert not (tmp_path / "new").exists()
