"""Training progress (issue 12, section 3): one display for the whole run (epochs x batches of work, with an ETA),
the epoch in its postfix, and without a terminal a line per epoch with elapsed time and ETA and no long silence
inside an epoch. Real tiny trainings on the built-in digits (pytest's stderr is no terminal: the log-line mode)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from robustdistill import trainers
from robustdistill.data import ImageSplit
from robustdistill.models import Classifier, load_model

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "defenses" / "digits-standard.toml"
FAST = ["val_robust=false", "device=cpu", "arch=cnn-tiny", "batch_size=256"]


def trainer(*extra: str) -> Any:
    return trainers.create("standard", recipe=RECIPE, overrides=[*FAST, *extra])


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "robustdistill.progress"]


def test_one_display_counts_every_batch_of_the_run(tmp_path: Path) -> None:
    run = trainer("epochs=3")
    seen: list[tuple[float, float, int]] = []

    def look(epoch: int, record: dict[str, float]) -> None:
        progress = run._progress
        assert progress is not None  # the same display from the first epoch to the last
        seen.append((progress.total, progress.done, progress.units))

    path = run.fit(tmp_path / "model", on_epoch_end=look)
    batches = -(-load_model(path).provenance["data"]["n_trained_on"] // 256)
    assert seen == [(3 * batches, e * batches, 3) for e in (1, 2, 3)]
    assert run._progress is None  # closed with the run


def test_without_a_terminal_each_epoch_logs_elapsed_time_and_eta(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="robustdistill")
    trainer("epochs=3").fit(tmp_path / "model")
    done = [line for line in progress_lines(caplog) if " done; " in line]
    assert len(done) == 3, progress_lines(caplog)
    for epoch, line in enumerate(done, start=1):
        assert line.startswith(f"train standard: epoch {epoch}/3 done; ")
        assert f"{round(100 * epoch / 3)}% of the work" in line
        assert f"; {epoch}/3 epochs, " in line  # counted in epochs, not "units"
        assert re.search(r"\d+:\d\d elapsed, ETA \d+:\d\d$", line), line


class SlowBatches(trainers.TRAINERS.get("standard")):  # type: ignore[misc]
    """Standard training whose batches each take 0.2 s longer: an epoch as long as a real one, in a tiny run."""

    def batch_loss(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.2)
        return super().batch_loss(model, x, y, generator)


def test_a_long_epoch_is_never_silent_for_longer_than_the_heartbeat(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="robustdistill")
    run = SlowBatches(trainer("epochs=1", "batch_size=128").config)  # 9 batches: about two seconds
    run.heartbeat_s = 0.25
    run.fit(tmp_path / "model")
    beats = [r for r in caplog.records if r.name == "robustdistill.progress" and "still running epoch 1/1" in r.getMessage()]
    assert len(beats) >= 2, progress_lines(caplog)
    assert all("elapsed, ETA" in r.getMessage() for r in beats)
    times = sorted(r.created for r in caplog.records if r.name.startswith("robustdistill"))
    assert max(b - a for a, b in zip(times, times[1:])) < 1.2  # without heartbeats: the whole epoch, 2 s


def test_a_resumed_run_starts_its_display_at_the_epochs_already_done(tmp_path: Path) -> None:
    out = tmp_path / "model"

    def stop_after_one(epoch: int, record: dict[str, float]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer("epochs=3").fit(out, on_epoch_end=stop_after_one)
    run = trainer("epochs=3")
    starts: list[float] = []
    original = run.run_progress

    def spy(epochs: int, done: int, train: ImageSplit) -> Any:
        starts.append(done)
        return original(epochs, done, train)

    run.run_progress = spy  # type: ignore[method-assign]
    run.fit(out, resume=True)
    assert starts == [1]
