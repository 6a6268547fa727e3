"""Pinned CPU kernels: every setting really takes effect (observed, not assumed), the CLI and the demo pin before torch
loads, runs record what they ran on, and the test suite itself runs pinned."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustdistill import reproducibility
from robustdistill.cli import main
from robustdistill.models.architectures import SmallCNN
from robustdistill.trainers.teachers import inference_forward

REPO = Path(__file__).resolve().parents[1]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


FLAGS = _cpu_flags()
needs_avx2 = pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"} or "avx2" not in FLAGS,
                                reason="the pin is to AVX2 kernels: an x86-64 CPU with AVX2 only")
HAS_AVX512 = "avx512f" in FLAGS


def _python(code: str, pinned: bool, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (torch not yet loaded), pinned or with every pinning variable removed."""
    env = {k: v for k, v in os.environ.items() if k not in {*reproducibility.PINNED_ENV, reproducibility.ENV_VAR}}
    env |= (reproducibility.PINNED_ENV if pinned else {}) | extra
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@needs_avx2
def test_the_test_suite_runs_the_pinned_kernels() -> None:
    # tests/conftest.py pins before torch is imported, unless ROBUSTDISTILL_REPRODUCIBLE=0 asks for native kernels.
    if os.environ.get(reproducibility.ENV_VAR) is not None and not reproducibility.requested():
        pytest.skip("this run asked for the CPU's native kernels")
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert reproducibility.is_pinned() and reproducibility.cpu_record()["pinned"] is True


# After the CLI's start-up, in a fresh interpreter: what torch, oneDNN (ONEDNN_VERBOSE=1 names each kernel it runs,
# e.g. jit:avx2 or jit:avx512_core) and MKL (its mkl_cbwr_get is not exported by libtorch_cpu, its service function
# is: 1 asks for the branch; 3 = COMPATIBLE, 2 = AUTO) really run, and the LiRA shadow key.
_PROBE = """
import ctypes, json, os, sys
from robustdistill.cli import main
rc = main({args!r})
import torch
torch.nn.functional.conv2d(torch.rand(64, 3, 16, 16), torch.rand(8, 3, 3, 3)).sum().item()
a = torch.rand(64, 64); (a @ a).sum().item()
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libtorch_cpu.so'))
from robustdistill.attacks.privacy.shadows import Recipe, shadow_key
print('RESULT', json.dumps({{'rc': rc, 'capability': torch.backends.cpu.get_cpu_capability(),
    'mkl_branch': lib.mkl_serv_cbwr_get(1) if hasattr(lib, 'mkl_serv_cbwr_get') else None,
    'shadow_key': shadow_key(Recipe('standard', {{'epochs': 3}}, 'x'), 'data', 0, None)}}))
"""


def _probe(args: list[str], **env: str) -> dict[str, object]:
    result = _python(_PROBE.format(args=args), pinned=False, ONEDNN_VERBOSE="1", **env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    found = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT "):])
    found["onednn"] = {line.split(",")[6] for line in lines if line.startswith("onednn_verbose") and ",exec,cpu," in line}
    return found


@pytest.fixture(scope="module")
def pinned_by_cli() -> dict[str, object]:
    return _probe(["--reproducible", "list", "architectures"])


@pytest.fixture(scope="module")
def native() -> dict[str, object]:
    return _probe(["list", "architectures"])


@needs_avx2
def test_cli_reproducible_pins_torch_kernels_and_plain_runs_stay_native(pinned_by_cli: dict, native: dict) -> None:
    assert pinned_by_cli["rc"] == 0 and pinned_by_cli["capability"] == "AVX2"
    if HAS_AVX512:  # a user's own runs keep the CPU's full speed, and the observable tells the two apart
        assert native["capability"] == "AVX512"


@needs_avx2
def test_onednn_runs_avx2_kernels_when_pinned(pinned_by_cli: dict, native: dict) -> None:
    kernels = pinned_by_cli["onednn"]
    assert any("avx2" in name for name in kernels), kernels
    assert not any(isa in name for name in kernels for isa in ("avx512", "amx", "avx10")), kernels
    if HAS_AVX512:
        assert any("avx512" in name for name in native["onednn"]), native["onednn"]


@needs_avx2
def test_mkl_runs_its_compatible_branch_when_pinned(pinned_by_cli: dict, native: dict) -> None:
    if pinned_by_cli["mkl_branch"] is None or not torch.backends.mkl.is_available():
        pytest.skip("this torch build does not expose MKL's reproducibility branch")
    assert pinned_by_cli["mkl_branch"] == 3 and native["mkl_branch"] != 3


@needs_avx2
def test_mkl_cbwr_avx2_would_not_take_effect_on_a_non_intel_cpu() -> None:
    # Why COMPATIBLE and not AVX2: MKL honours its ISA branches on Intel CPUs only; elsewhere it reads back AUTO.
    if "GenuineIntel" in Path("/proc/cpuinfo").read_text():
        pytest.skip("only on a non-Intel CPU")
    found = _probe(["list", "architectures"], MKL_CBWR="AVX2")
    if found["mkl_branch"] is None:
        pytest.skip("this torch build does not expose MKL's reproducibility branch")
    assert found["mkl_branch"] == 2


@needs_avx2
def test_the_environment_variable_and_the_demo_pin_too() -> None:
    assert _probe(["list", "architectures"], ROBUSTDISTILL_REPRODUCIBLE="1")["capability"] == "AVX2"
    # demo always pins, its README numbers must reproduce: checked on the start-up the demo command runs.
    code = ("from robustdistill.cli import _pin_kernels, build_parser\n"
            "_pin_kernels(build_parser().parse_args(['demo', '--quick']))\n"
            "import torch\nprint(torch.backends.cpu.get_cpu_capability())")
    assert _python(code, pinned=False).stdout.split() == ["AVX2"]


@needs_avx2
def test_shadow_models_are_not_shared_between_pinned_and_native_kernels(pinned_by_cli: dict, native: dict) -> None:
    # A pinned audit reusing a shadow trained on this CPU's native kernels (same recipe, data and seed) would not
    # reproduce elsewhere: the kernels are part of the shadow cache key; pinned processes do share theirs.
    assert pinned_by_cli["shadow_key"] != native["shadow_key"]
    if reproducibility.is_pinned():
        from robustdistill.attacks.privacy.shadows import Recipe, shadow_key

        assert shadow_key(Recipe("standard", {"epochs": 3}, "x"), "data", 0, None) == pinned_by_cli["shadow_key"]


def test_training_and_audits_record_their_kernels(tmp_path: Path) -> None:
    from robustdistill import audit, trainers

    out = trainers.create("standard", recipe=REPO / "defenses/digits-standard.toml",
                          overrides=["epochs=1", "arch=cnn-tiny", "val_robust=false"]).fit(tmp_path / "model")
    cpu = json.loads((out / "config.json").read_text())["provenance"]["cpu"]
    assert cpu == reproducibility.cpu_record() and cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    suite = {"name": "kernels", "samples": 20, "pipeline": {"teacher": str(out), "student": str(out)},
             "data": {"kind": "digits"}, "threat_model": {"norm": "linf", "eps": 0.125}, "probes": [{"kind": "clean"}]}
    report = audit(suite, out=tmp_path / "run", progress=False, render=False)
    assert report.manifest["cpu"] == cpu
    assert json.loads((tmp_path / "run" / "report.json").read_text())["manifest"]["cpu"] == cpu


def test_pin_after_torch_loaded_other_kernels_is_a_clear_error() -> None:
    code = ("import torch\nfrom robustdistill import reproducibility\n"
            "try:\n    reproducibility.pin()\nexcept reproducibility.UserInputError as error:\n    print('refused:', error)")
    result = _python(code, pinned=False)
    assert result.stdout.startswith("refused: reproducibility: torch was imported before pinning"), result
    assert "before anything imports torch" in result.stdout


def test_a_bad_environment_value_is_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(reproducibility.ENV_VAR, "maybe")
    assert main(["list", "attacks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ROBUSTDISTILL_REPRODUCIBLE" in err and "Traceback" not in err


@needs_avx2
def test_pinned_teachers_run_eager_so_students_reproduce(monkeypatch: pytest.MonkeyPatch) -> None:
    # The traced graph's outputs differ from the eager model's in the last bits (up to ~1e-8 on this CNN), and
    # its kernels are not the ones shown to reproduce; under the pin the teacher is the eager model, bit for bit.
    monkeypatch.setattr(reproducibility, "is_pinned", lambda: True)  # as in a pinned run, whatever this run is
    torch.manual_seed(0)
    teacher = SmallCNN(10, 1, 32, 64).eval()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        expected = teacher(x)
    assert torch.equal(inference_forward(teacher, x)(x), expected)

