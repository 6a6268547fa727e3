"""Real tiny digits models for the audit tests, trained once per session (no mocks stand in for a model).

- ``digits_pair``: a clean teacher (standard, 8 epochs) and a Hinton-KD student of it (15 epochs): seconds.
- ``dd_student``: defensive distillation at T = 100 (teacher and student, 10 epochs each): masks gradients.
- ``pgd_at_student``: Madry PGD adversarial training at the digits threat model (10 epochs): really robust.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EPS = 0.125  # attacks/digits-linf.toml


@pytest.fixture(scope="session")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads are many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train(method: str, recipe: str, out: Path, overrides: list[str]) -> Path:
    from robustdistill import trainers

    seed = int(os.environ.get("ROBUSTDISTILL_TEST_SEED", "0"))  # as the test_seed fixture (tests/conftest.py)
    overrides = ["device=cpu", f"seed={seed}", *overrides]
    return Path(trainers.create(method, recipe=REPO / "defenses" / recipe, overrides=overrides).fit(out))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-models")


@pytest.fixture(scope="session")
def digits_pair(one_thread: None, models_dir: Path) -> tuple[Path, Path]:
    teacher = _train("standard", "digits-standard.toml", models_dir / "teacher", ["epochs=8", "val_robust=false"])
    student = _train("kd", "digits-kd.toml", models_dir / "kd", ["epochs=15", f"teacher={teacher}", "val_robust=false"])
    return teacher, student


@pytest.fixture(scope="session")
def dd_student(one_thread: None, models_dir: Path) -> Path:
    return _train("defensive-distillation", "digits-defensive-distillation.toml", models_dir / "dd",
                  ["epochs=10", "lr_milestones=[]", "val_robust=false"])


@pytest.fixture(scope="session")
def pgd_at_student(one_thread: None, models_dir: Path) -> Path:
    return _train("pgd-at", "digits-pgd-at.toml", models_dir / "pgd-at", ["epochs=10", "lr_milestones=[]", "val_attack_steps=5"])


@pytest.fixture(scope="session")
def audit_pair() -> Any:
    """The audit of a suite on a (teacher, student) pair into a fresh run folder, without a progress bar:
    ``audit_pair(spec, pair, tmp_path_factory, name, render=False) -> Report``."""
    return run_audit_on_pair


def run_audit_on_pair(spec: dict[str, Any], pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
                      name: str, render: bool = False) -> Any:
    from robustdistill.audits import audit

    teacher, student = pair
    return audit(spec, teacher=teacher, student=student, out=tmp_path_factory.mktemp(name) / "run", progress=False,
                 render=render)


@pytest.fixture(scope="session")
def cheap_suite() -> Any:
    """The builder of a fast suite: ``cheap_suite(teacher, student, **top_level_overrides) -> dict``."""
    return build_cheap_suite


def build_cheap_suite(teacher: Path | None = None, student: Path | None = None, **extra: Any) -> dict[str, Any]:
    """A fast suite (seconds on digits) exercising every probe kind except AutoAttack."""
    suite: dict[str, Any] = {
        "name": "cheap",
        "seed": 0,
        "samples": 120,
        "pipeline": {k: str(v) for k, v in (("teacher", teacher), ("student", student)) if v is not None},
        "data": {"kind": "digits"},
        "threat_model": {"norm": "linf", "eps": EPS},
        "probes": [
            {"kind": "clean"},
            {"kind": "attack", "attack": "fgsm"},
            {"kind": "attack", "name": "pgd-10", "attack": "pgd", "params": {"steps": 10}},
            {"kind": "attack", "attack": "cw-linf", "params": {"steps": 10}},
            {"kind": "curve", "attack": "pgd", "params": {"steps": 5}, "eps": [0.0, 0.0625, 0.125, 0.25]},
            {"kind": "transfer", "params": {"steps": 5}},
            {"kind": "agreement", "params": {"steps": 5}},
            {"kind": "masking", "more_steps": 20, "restarts": 2, "square_queries": 100},
        ],
        "gates": {"student.clean.accuracy": {"min": 0.5}, "retention.pgd-10": {"min": 0.0}},
    }
    suite.update(extra)
    return suite


# Language models: a tiny instruction teacher (sft on the procedural generator) and its seq-KD student, trained once,
# on four families (harmful requests, their benign how-to twins, sums, capitals) without noise: ~30 s, and the
# teacher refuses ~95% of the harmful test requests and ~3% of the benign ones.
LM_FAMILIES = ["harmful", "howto", "add", "capital"]
LM_DATA_SPEC = {"kind": "instructions", "n": 480, "noise": 0.0, "families": LM_FAMILIES}
LM_DATA = ["data.n=480", "data.noise=0", f"data.families={LM_FAMILIES}".replace("'", '"')]


@pytest.fixture(scope="session")
def lm_data() -> dict[str, Any]:
    """The [data] of the lm_pair fixture's training (a suite auditing them must use it, or lm-mia refuses)."""
    return dict(LM_DATA_SPEC)


@pytest.fixture(scope="session")
def lm_pair(one_thread: None, models_dir: Path) -> tuple[Path, Path]:
    teacher = _train("sft", "instructions-teacher.toml", models_dir / "lm-teacher", [*LM_DATA, "epochs=15"])
    student = _train("seq-kd", "instructions-seq-kd.toml", models_dir / "lm-student",
                     [*LM_DATA, "epochs=8", f"teacher={teacher}", "teacher_recipe=''"])
    return teacher, student
