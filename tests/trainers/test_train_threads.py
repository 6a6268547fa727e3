"""The trainers' Python entry points train on robustdistill's thread default, as the CLI does (issue 12, section 3:
torch's one thread per core made the Python API several times slower): 1 thread, unless the caller passes
``threads=``, or $ROBUSTDISTILL_THREADS / $OMP_NUM_THREADS say otherwise. Real tiny trainings on the digits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from robustdistill import threads, trainers
from robustdistill.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "defenses" / "digits-standard.toml"
FAST = ["epochs=1", "val_robust=false", "device=cpu", "arch=cnn-tiny", "batch_size=256"]


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a new Python session: no thread setting in the environment, robustdistill has applied nothing yet,
    and torch runs its own default of several threads."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "_applied", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def threads_while_training(trainer: trainers.Trainer, out: Path) -> list[int]:
    seen: list[int] = []
    trainer.fit(out, on_epoch_end=lambda epoch, record: seen.append(torch.get_num_threads()))
    return seen


@pytest.mark.usefixtures("fresh_process")
def test_create_then_fit_trains_on_one_thread_by_default(tmp_path: Path) -> None:
    trainer = trainers.create("standard", recipe=RECIPE, overrides=FAST)
    assert threads_while_training(trainer, tmp_path / "model") == [1]


@pytest.mark.usefixtures("fresh_process")
def test_train_from_recipe_takes_a_thread_count(tmp_path: Path) -> None:
    trainers.train_from_recipe(RECIPE, tmp_path / "model", overrides=FAST, threads=3)
    assert torch.get_num_threads() == 3


@pytest.mark.usefixtures("fresh_process")
def test_the_environment_overrides_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.ENV_VAR, "3")
    trainer = trainers.create("standard", recipe=RECIPE, overrides=FAST)
    assert threads_while_training(trainer, tmp_path / "model") == [3]


@pytest.mark.usefixtures("fresh_process")
def test_a_count_set_with_torch_after_the_default_is_kept(tmp_path: Path) -> None:
    trainers.create("standard", recipe=RECIPE, overrides=FAST).fit(tmp_path / "first")
    torch.set_num_threads(2)  # the user's choice, made after robustdistill applied its default
    trainer = trainers.create("standard", recipe=RECIPE, overrides=FAST)
    assert threads_while_training(trainer, tmp_path / "second") == [2]


@pytest.mark.parametrize("bad", [0, -1, 10**6])
def test_a_bad_count_is_refused_before_any_work(tmp_path: Path, bad: int) -> None:
    with pytest.raises(UserInputError, match="^threads: "):
        trainers.create("standard", recipe=RECIPE, overrides=FAST, threads=bad)
    with pytest.raises(UserInputError, match="^threads: "):
        trainers.train_from_recipe(RECIPE, tmp_path / "model", overrides=FAST, threads=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("fresh_process")
def test_the_command_lines_thread_count_holds_through_training(tmp_path: Path) -> None:
    from robustdistill.cli import main

    sets = [arg for item in FAST for arg in ("--set", item)]
    assert main(["-q", "--threads", "2", "train", "standard", "--config", str(RECIPE), *sets,
                 "--out", str(tmp_path / "model")]) == 0
    assert torch.get_num_threads() == 2  # the trainer's own default did not undo --threads 2
