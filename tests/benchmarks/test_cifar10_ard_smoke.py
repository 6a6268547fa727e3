"""benchmarks/cifar10_ard.py end to end on CPU: a tiny CIFAR-10 folder in the official python format (60 training and
20 test images), untrained ResNet-18 teachers, one epoch per student and a reduced audit suite (--suite). Slow: a few
minutes on two cores (each student is a ResNet-18 attacked by PGD-10 during training)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustdistill import load_model
from robustdistill.data.cifar10 import DEFAULT_CLASSES
from robustdistill.models import Classifier, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "cifar10_ard.py"
METHODS = ["pgd-at", "rslad", "mtard"]  # the three ways the script configures a student: none, one, two teachers
TRAIN_PER_BATCH, TEST = 12, 20  # 5 x 12 = 60 training images: the recipes' val_fraction 0.1 holds out 6

# clean, PGD and CW named and typed as in audits/cifar10.toml, with a few steps; AutoAttack with all four
# components at reduced settings (as audits/demo-quick.toml does).
SUITE = """
name = "cifar10-smoke"
description = "benchmarks/cifar10_ard.py smoke test: 8 points, a few attack steps"
seed = 0
samples = 8
device = "cpu"

[data]
kind = "cifar10"
root = "replaced-by-the-script"
split = "test"

[threat_model]
use = "{threat_model}"

[[probes]]
kind = "clean"

[[probes]]
kind = "attack"
name = "pgd-20"
attack = "pgd"
params = {{ steps = 3, alpha = 0.00784313725490196, restarts = 1 }}

[[probes]]
kind = "attack"
attack = "cw-linf"
params = {{ steps = 3 }}

[[probes]]
kind = "attack"
attack = "autoattack"
params = {{ steps = 3, n_queries = 20, n_target_classes = 2 }}
"""


def write_cifar10(folder: Path) -> Path:
    """The official cifar-10-batches-py layout: five pickled training batches, a test batch and batches.meta."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = [(f"data_batch_{i}", TRAIN_PER_BATCH, f"training batch {i} of 5") for i in range(1, 6)]
    for index, (name, n, label) in enumerate([*batches, ("test_batch", TEST, "testing batch 1 of 1")]):
        batch = {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in (np.arange(n) + index * n) % 10],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"image_{index}_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    meta = {b"num_cases_per_batch": TRAIN_PER_BATCH, b"label_names": [c.encode() for c in DEFAULT_CLASSES],
            b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder


def write_teacher(out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = Classifier.from_arch("resnet18-cifar", num_classes=10, input_shape=(3, 32, 32), classes=list(DEFAULT_CLASSES))
    return save_checkpoint(model.eval(), out)


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | clean | PGD-20 | CW | AutoAttack | epoch (s) | epoch / PGD-AT |", stdout
    assert set(lines[1]) <= {"|", "-"}, stdout
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_cifar10_ard_runs_end_to_end_on_a_tiny_cifar10_folder(tmp_path: Path) -> None:
    data = write_cifar10(tmp_path / "cifar-10-batches-py")
    robust, clean = write_teacher(tmp_path / "robust-teacher", 1), write_teacher(tmp_path / "clean-teacher", 2)
    suite = tmp_path / "smoke.toml"
    suite.write_text(SUITE.format(threat_model=(REPO / "attacks" / "cifar10-linf.toml").as_posix()))
    reports, checkpoints = tmp_path / "reports", tmp_path / "checkpoints"
    cache = tmp_path / "cache"
    env = {
        **os.environ,  # what tests/conftest.py set: offline Hugging Face, throwaway caches
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(cache / "hf"), "ROBUSTDISTILL_CACHE": str(cache / "robustdistill"),
        "MPLCONFIGDIR": str(cache / "mpl"), "MPLBACKEND": "Agg",
    }
    command = [
        sys.executable, str(SCRIPT), "--data-root", str(data), "--device", "cpu",
        "--robust-teacher", str(robust), "--clean-teacher", str(clean), "--epochs", "1", "--train-fraction", "0.5",
        "--samples", "8", "--methods", ",".join(METHODS), "--suite", str(suite),
        "--out", str(reports), "--checkpoints", str(checkpoints),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=3000)
    assert result.returncode == 0, result.stderr[-4000:]

    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == METHODS, result.stdout
    for method, *accuracies, epoch, ratio in rows:
        assert len(accuracies) == 4, result.stdout
        assert all(re.fullmatch(r"\d\.\d{3}", cell) and 0.0 <= float(cell) <= 1.0 for cell in accuracies), result.stdout
        assert float(epoch) > 0 and float(ratio) > 0, result.stdout
    assert rows[0][-1] == "1.00"  # PGD-AT is the reference

    index = reports / "index.html"
    assert index.is_file()
    html = index.read_text()
    for method in METHODS:
        assert f'href="{method}/report.html"' in html
        assert (reports / method / "report.html").is_file()
        model = load_model(checkpoints / method)
        assert isinstance(model, Classifier)
        assert model.arch == "resnet18-cifar" and model.num_classes == 10 and tuple(model.input_shape) == (3, 32, 32)
        assert not (checkpoints / f"{method}.partial").exists()

    # A re-run continues: the finished students are reused with their recorded epoch times, the audits resume.
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert not any(line.startswith("training ") for line in again.stderr.splitlines()), again.stderr
    assert all(f"{method}: reusing" in again.stderr for method in METHODS), again.stderr
    assert table_rows(again.stdout) == rows
