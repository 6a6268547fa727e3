"""Fixtures for the report tests: the runner's real output on two tiny digits models.

A clean teacher and a defensively distilled student (which masks gradients) are trained on the built-in digits,
then audited once per session by robustdistill.audit with a small suite (clean, FGSM, PGD, a robustness curve,
transfer, agreement and the masking probe). The report tests render that run directory: every row, interval,
retention, gate, flag and examples array is the runner's own, so a check the runner does not produce cannot appear.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CURVE_EPS = [0.0, 0.0625, 0.125, 0.25]


def report_suite(samples: int = 120) -> dict[str, Any]:
    """Every section of report.html that a classifier audit fills, at the digits threat model, in seconds: clean,
    FGSM, PGD, a reduced AutoAttack, a curve, transfer, agreement, the masking probe, and gates on the student's
    accuracies and on its retention of the teacher's AutoAttack accuracy."""
    return {
        "name": "digits-report-test",
        "seed": 0,
        "samples": samples,
        "data": {"kind": "digits"},
        "threat_model": {"use": str(REPO / "attacks" / "digits-linf.toml")},
        "probes": [
            {"kind": "clean"},
            {"kind": "attack", "attack": "fgsm"},
            {"kind": "attack", "name": "pgd", "attack": "pgd", "params": {"steps": 20}},
            # Reduced on purpose (official: 100 iterations, Square 5000 queries): the reports must say so.
            {"kind": "attack", "attack": "autoattack", "params": {"steps": 5, "n_queries": 50}},
            {"kind": "curve", "attack": "pgd", "params": {"steps": 10}, "eps": CURVE_EPS},
            {"kind": "transfer", "params": {"steps": 10}},
            {"kind": "agreement", "params": {"steps": 10}},
            {"kind": "masking", "more_steps": 20, "restarts": 2, "square_queries": 100},
        ],
        "gates": {
            "student.clean.accuracy": {"min": 0.5},
            "student.pgd.robust_accuracy": {"min": 0.3},
            "student.fgsm.robust_accuracy": {"min": 0.2},
            "retention.autoattack": {"min": 0.8},
        },
    }


def train_pair(root: Path, epochs: int = 5) -> tuple[Path, Path]:
    """A clean teacher and a defensively distilled student (expected to mask gradients), tiny and quick."""
    from robustdistill import trainers

    common = [
        f"epochs={epochs}",
        "device=cpu",
        "val_robust=false",
        "arch=cnn-tiny",
        "lr_milestones=[]",
        "optimizer=adam",
    ]
    teacher = trainers.create(
        "standard", recipe=REPO / "defenses/digits-standard.toml", overrides=[*common, "lr=0.003", "weight_decay=0"]
    ).fit(root / "teacher")
    student = trainers.create(
        "defensive-distillation", recipe=REPO / "defenses/digits-defensive-distillation.toml", overrides=common
    ).fit(root / "student-dd")
    return Path(teacher), Path(student)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; with two on a busy 2-core machine they ran ~40x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    with one_thread():
        return train_pair(tmp_path_factory.mktemp("report-models"))


@pytest.fixture(scope="session")
def audited_run(trained_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory robustdistill.audit wrote (report.json, results.jsonl, artifacts/examples.npz), not yet
    rendered. Shared: copy it before rendering or changing it."""
    from robustdistill import audit

    teacher, student = trained_pair
    run_dir = tmp_path_factory.mktemp("report-run") / "run"
    with one_thread():
        audit(report_suite(), teacher=teacher, student=student, out=run_dir, progress=False, render=False)
    return run_dir


@pytest.fixture(scope="session")
def privacy_run(trained_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A privacy-only audit (clean accuracy and the loss-threshold membership-inference attack, no attack probes)
    of the same pair, written by robustdistill.audit and rendered; about a second. Shared: copy before changing."""
    from robustdistill import audit

    teacher, student = trained_pair
    spec = {"name": "privacy-report-test", "seed": 0, "samples": 120, "data": {"kind": "digits"},
            "probes": [{"kind": "clean"}, {"kind": "mia-loss"}]}
    run_dir = tmp_path_factory.mktemp("privacy-run") / "run"
    with one_thread():
        audit(spec, teacher=teacher, student=student, out=run_dir, progress=False)
    return run_dir
