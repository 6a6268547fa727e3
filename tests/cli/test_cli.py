"""The `robustdistill` command: help for every command, `list`, `train`, and bad input -> exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustdistill import load_model
from robustdistill.cli import build_parser, main


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_for_the_program_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in [["--help"]] + [[name, "--help"] for name in subcommands()]:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        assert "usage: robustdistill" in capsys.readouterr().out


def test_list_names_trainers_attacks_and_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["standard", "kd", "pgd-at", "trades", "defensive-distillation", "fgsm", "pgd", "cnn-small", "wrn-34-10"]:
        assert f"  {name} " in out


def test_train_writes_a_checkpoint_that_load_model_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "std"
    code = main(["-q", "train", "standard", "--config", "defenses/digits-standard.toml", "--out", str(out), "--set", "epochs=2",
                 "--device", "cpu"])
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_model(out)
    assert model.num_classes == 10 and tuple(model.input_shape) == (1, 8, 8)
    recorded = json.loads((out / "config.json").read_text())["provenance"]["recipe"]["config"]
    assert recorded["epochs"] == 2 and recorded["device"] == "cpu"  # --device replaced the recipe's "auto"


def test_the_demo_reuses_a_diffusion_checkpoint(tmp_path: Path) -> None:
    """A diffusers directory (model_index.json, no top-level config.json) counts as a finished checkpoint, so a
    second demo reuses the diffusion models instead of training them again."""
    from robustdistill.demo import is_checkpoint
    from robustdistill.models.builders import build_tiny_class_unet

    assert is_checkpoint(build_tiny_class_unet(tmp_path / "ddpm"))
    assert not is_checkpoint(tmp_path / "missing") and not is_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "standard", "--config", "defenses/digits-standard.toml", "--set", "epochs=-3"], "epochs"),
        (["train", "standard", "--config", "defenses/missing.toml"], "--config"),
        (["train", "kd", "--config", "defenses/digits-kd.toml", "--set", "teacher=/nonexistent/teacher", "--set", "teacher_recipe=''"], "teacher"),
        (["train", "mtard-typo", "--config", "defenses/digits-standard.toml"], "trainer"),
        (["train", "standard", "--config", "defenses/digits-standard.toml", "--set", "data.kind=cifar10"], "data.root"),
        (["train", "standard", "--config", "defenses/digits-pgd-at.toml"], "method"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(argv: list[str], named: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "robustdistill", *argv, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("robustdistill: error: "), result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert named in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_argparse_errors_also_exit_2() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train"])
    assert exited.value.code == 2


def test_main_leaves_the_robustdistill_logger_as_it_found_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A -q run from Python used to leave the logger at WARNING with the CLI's handler: a notebook lost its INFO
    lines, and a later test its captured records."""
    import logging

    logger = logging.getLogger("robustdistill")
    before = (list(logger.handlers), logger.level)
    assert main(["-q", "list"]) == 0
    assert (list(logger.handlers), logger.level) == before
