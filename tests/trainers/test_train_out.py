"""`train --out`: checked before epoch 1, a user's files are never replaced or deleted, and one training at a time
per checkpoint (issue 11, items 1 and 2). Real tiny trainings on the built-in digits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from robustdistill import trainers
from robustdistill.cli import main
from robustdistill.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "defenses" / "digits-standard.toml")
FAST = ["epochs=1", "val_robust=false", "device=cpu"]


def trainer(*extra: str) -> Any:
    return trainers.create("standard", recipe=RECIPE, overrides=[*FAST, *extra])


def train_cli(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    sets = [arg for s in FAST for arg in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "robustdistill", "-q", "train", "standard", "--config", RECIPE,
                           *sets, "--out", str(out), *extra], capture_output=True, text=True, timeout=300, cwd=REPO)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], field: str = "out") -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"robustdistill: error: {field}: "), result.stderr


def test_a_folder_that_only_looks_like_a_checkpoint_is_refused_before_epoch_1(tmp_path: Path, snapshot: Any,
                                                                              plant_users_files: Any) -> None:
    out = tmp_path / "mine"
    plant_users_files(out, {"config.json": '{"format": "robustdistill.classifier"}', "thesis.tex": "precious"})
    before = snapshot(tmp_path)
    epochs: list[int] = []
    with pytest.raises(UserInputError, match="not a model directory robustdistill wrote"):
        trainer().fit(out, on_epoch_end=lambda epoch, record: epochs.append(epoch))
    assert epochs == []
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_saving_never_replaces_a_folder_with_other_files_next_to_a_checkpoint(tmp_path: Path, snapshot: Any) -> None:
    """What `proard export`, GUARD's squeeze and every trainer save through: only a folder holding nothing but a
    robustdistill checkpoint's config.json and model.safetensors is replaced."""
    from robustdistill.models import Classifier, save_checkpoint

    model = Classifier.from_arch("cnn-tiny", num_classes=3, input_shape=(1, 8, 8))
    out = save_checkpoint(model, tmp_path / "model")
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(UserInputError, match="not a model directory robustdistill wrote"):
        save_checkpoint(model, out)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_out_that_is_a_file_is_refused_before_epoch_1_and_leaves_no_partial(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.write_text("a file of mine")
    epochs: list[int] = []
    with pytest.raises(UserInputError, match="is a file"):
        trainer().fit(out, on_epoch_end=lambda epoch, record: epochs.append(epoch))
    assert epochs == []
    assert out.read_text() == "a file of mine" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("where", ["under a file", "under /proc", "under /sys"])
def test_an_out_that_cannot_be_created_exits_2_before_work(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("x")
    out = {"under a file": tmp_path / "a-file" / "model", "under /proc": Path("/proc/robustdistill-test/model"),
           "under /sys": Path("/sys/robustdistill-test/model")}[where]
    result = train_cli(out)
    assert_one_line_exit_2(result)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and (tmp_path / "a-file").read_text() == "x"


def test_a_users_file_where_the_training_report_goes_is_refused_before_training(tmp_path: Path) -> None:
    out = tmp_path / "model"
    (tmp_path / "model.training.html").write_text("<p>my own page</p>")
    result = train_cli(out)
    assert_one_line_exit_2(result)
    assert "model.training.html" in result.stderr
    assert (tmp_path / "model.training.html").read_text() == "<p>my own page</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.training.html"]


def test_retraining_replaces_its_own_checkpoint_and_report(tmp_path: Path, snapshot: Any) -> None:
    out = tmp_path / "model"
    assert train_cli(out).returncode == 0
    first = snapshot(tmp_path)
    second = train_cli(out, "--set", "seed=1")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.training.html", "model.training.png"]
    after = snapshot(tmp_path)
    assert after["model/model.safetensors"] != first["model/model.safetensors"]
    assert after["model.training.png"] != first["model.training.png"]


def test_a_users_folder_named_like_the_work_folder_is_never_emptied(tmp_path: Path, snapshot: Any,
                                                                    plant_users_files: Any) -> None:
    out = tmp_path / "model"
    work = tmp_path / "model.partial"
    plant_users_files(work, {"notes.txt": "mine"})
    with pytest.raises(UserInputError, match="not written by robustdistill"):
        trainer().fit(out, resume=True)
    assert snapshot(work) == {"notes.txt": b"mine"} and not out.exists()


def test_files_a_user_adds_to_the_work_folder_survive_the_end_of_training(tmp_path: Path, snapshot: Any) -> None:
    out = tmp_path / "model"
    work = tmp_path / "model.partial"

    def add_note(epoch: int, record: dict[str, float]) -> None:
        (work / "my-note.txt").write_text("mine")

    trainer().fit(out, on_epoch_end=add_note)
    assert (out / "model.safetensors").is_file()
    from robustdistill import ownership

    left = {name: data for name, data in snapshot(work).items() if name not in ownership.BOOKKEEPING}
    assert left == {"my-note.txt": b"mine"}  # its own state file is gone, the note stays


def test_a_second_training_into_a_checkpoint_in_training_is_refused_naming_the_holder(tmp_path: Path,
                                                                                      snapshot: Any) -> None:
    out = tmp_path / "model"
    started, go_on = threading.Event(), threading.Event()

    def hold(epoch: int, record: dict[str, float]) -> None:  # the first training pauses after epoch 1
        started.set()
        go_on.wait(timeout=300)

    first = threading.Thread(target=lambda: trainer("epochs=2").fit(out, on_epoch_end=hold))
    first.start()
    try:
        assert started.wait(timeout=300)
        state = snapshot(tmp_path / "model.partial")
        epochs: list[int] = []
        with pytest.raises(UserInputError, match="in use by robustdistill train standard") as refused:
            trainer("epochs=2").fit(out, resume=True, on_epoch_end=lambda epoch, record: epochs.append(epoch))
        assert f"pid {os.getpid()}" in str(refused.value) and socket.gethostname() in str(refused.value)
        assert epochs == [] and snapshot(tmp_path / "model.partial") == state
    finally:
        go_on.set()
        first.join(timeout=300)
    assert (out / "model.safetensors").is_file() and not (tmp_path / "model.partial").exists()
    from robustdistill import ownership

    assert ownership.holder(tmp_path / "model.partial") is None


def test_a_users_folder_where_guard_writes_its_distilled_data_is_refused_before_the_squeeze(
        tmp_path: Path, snapshot: Any, plant_users_files: Any) -> None:
    out = tmp_path / "student"
    root = tmp_path / "student.distilled"
    plant_users_files(root, {"grid.png": b"\x89PNG my picture", "notes.txt": "mine"})
    fast = ["ipc=2", "epochs=1", "recover.iterations=5", "squeeze.epochs=1", "squeeze.arch_params={width=8, hidden=32}",
            "arch_params={width=8, hidden=32}", "device=cpu"]
    guard = trainers.create("guard", recipe=str(REPO / "defenses" / "digits-guard.toml"), overrides=fast)
    with pytest.raises(UserInputError, match="not written by robustdistill"):
        guard.fit(out)
    assert snapshot(root) == {"grid.png": b"\x89PNG my picture", "notes.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.distilled"]  # nothing squeezed, nothing trained

