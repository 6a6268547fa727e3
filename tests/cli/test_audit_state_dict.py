"""`robustdistill audit` on bare state dicts: --arch, --num-classes and --input-shape say what the file cannot, per
model (ROLE=) or for every state dict; the report still records each file's path and sha256."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill.cli import main
from robustdistill.models import Classifier, checkpoint_sha256


def test_audit_state_dicts_with_arch_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    teacher = Classifier.from_arch("cnn-small", num_classes=10, input_shape=(1, 8, 8))
    student = Classifier.from_arch("cnn-tiny", num_classes=10, input_shape=(1, 8, 8))
    torch.save(teacher.network.state_dict(), tmp_path / "teacher.pt")
    torch.save(student.network.state_dict(), tmp_path / "student.pt")
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "sd"\nsamples = 20\n[data]\nkind = "digits"\n[[probes]]\nkind = "clean"\n')
    code = main(["-q", "audit", str(suite), "--teacher", str(tmp_path / "teacher.pt"), "--student",
                 str(tmp_path / "student.pt"), "--arch", "teacher=cnn-small", "--arch", "student=cnn-tiny",
                 "--num-classes", "10", "--input-shape", "1,8,8", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    recorded = report["manifest"]["checkpoints"]
    for role in ("teacher", "student"):
        assert recorded[role]["path"] == str(tmp_path / f"{role}.pt")
        assert recorded[role]["sha256"] == checkpoint_sha256(tmp_path / f"{role}.pt")
    assert {r["model"] for r in report["results"] if r["metric"] == "accuracy"} >= {"teacher", "student"}

    # One --arch for every state dict: the teacher's cnn-small weights do not fit cnn-tiny, and the audit says so.
    code = main(["-q", "audit", str(suite), "--teacher", str(tmp_path / "teacher.pt"), "--student",
                 str(tmp_path / "student.pt"), "--arch", "cnn-tiny", "--out", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert code == 2 and "pipeline.teacher" in err and "cnn-tiny" in err, err
    assert not (tmp_path / "run2").exists()
