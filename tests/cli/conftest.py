"""Fixtures of the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from robustdistill import threads
from robustdistill.models import Classifier, save_checkpoint


@pytest.fixture
def fresh_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a fresh process: no thread variables set, robustdistill's default not applied yet; torch's thread
    count restored afterwards."""
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_applied", None)
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def untrained_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Checkpoint directories of untrained digits models (a cnn-small teacher, two cnn-tiny students of different
    seeds): real models for tests of the run folder, the progress and the output, not of the numbers."""
    root = tmp_path_factory.mktemp("untrained")
    paths = {}
    for role, arch, seed in (("teacher", "cnn-small", 0), ("student", "cnn-tiny", 1), ("other", "cnn-tiny", 2)):
        torch.manual_seed(seed)
        paths[role] = str(save_checkpoint(Classifier.from_arch(arch, num_classes=10, input_shape=(1, 8, 8)), root / role))
    return paths
