"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustdistill.models import Classifier, save_checkpoint


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
