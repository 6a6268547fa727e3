"""audit() from Python (issue 12): the CLI's thread default, progress lines without a terminal, log lines that say
which model they are for, and a repr that is the CLI's summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from robustdistill.audits import audit

SUITE: dict[str, Any] = {
    "name": "progress",
    "samples": 40,
    "data": {"kind": "digits"},
    "threat_model": {"norm": "linf", "eps": 0.125},
    "probes": [
        {"kind": "clean"},
        {"kind": "attack", "attack": "fgsm"},
        {"kind": "attack", "attack": "autoattack", "params": {"steps": 5, "n_queries": 20}},
    ],
    "gates": {"student.clean.accuracy": {"min": 0.0}},
}


def _audit(models: dict[str, str], out: Path, **keywords: Any) -> Any:
    return audit(SUITE, teacher=models["teacher"], student=models["student"], out=out, render=False, **keywords)


def test_audit_runs_on_the_thread_default_unless_told(untrained_models: dict[str, str], tmp_path: Path,
                                                      fresh_threads: None) -> None:
    torch.set_num_threads(2)  # torch's own default is one thread per core
    _audit(untrained_models, tmp_path / "a", progress=False)
    assert torch.get_num_threads() == 1
    _audit(untrained_models, tmp_path / "b", progress=False, threads=2)
    assert torch.get_num_threads() == 2


def test_without_a_terminal_each_unit_logs_progress_and_attack_lines_name_their_model(
        untrained_models: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="robustdistill")
    _audit(untrained_models, tmp_path / "run", progress=None)  # pytest's stderr is no terminal
    messages = [r.getMessage() for r in caplog.records]
    done = [m for m in messages if m.startswith("audit progress: ") and " done; " in m]
    assert len(done) == 6, messages  # 3 probes x 2 models
    assert done[0].startswith("audit progress: clean on teacher done; 1/6 units,") and "ETA" in done[0]
    assert done[-1].startswith("audit progress: autoattack on student done; 6/6 units, 100% of the work")
    # The bar weighs units by expected work: the two cheap units of the teacher are a sliver of the whole.
    second = next(m for m in done if "2/6 units" in m)
    assert int(second.split("units, ")[1].split("%")[0]) < 10, second
    attack_lines = [m for m in messages if "AutoAttack: robust accuracy after" in m]
    assert attack_lines and all(m.startswith(("[autoattack on teacher] ", "[autoattack on student] "))
                                for m in attack_lines), attack_lines
    assert any(m.startswith("[autoattack on student] ") for m in attack_lines)


def test_repr_is_the_summary(untrained_models: dict[str, str], tmp_path: Path) -> None:
    report = _audit(untrained_models, tmp_path / "run", progress=False)
    text = repr(report)
    assert text == f"audit report of suite 'progress' in {tmp_path / 'run'}\n{report.summary()}"
    assert "verdict:" in text and len(text) < 2000
    assert report._repr_html_().startswith("<pre>audit report of suite &#x27;progress&#x27;")
