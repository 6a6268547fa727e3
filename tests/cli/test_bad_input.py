"""Every bad input of issue 11 (items 2 and 3) through the real CLI: exit 2, at most 3 lines on stderr, no traceback,
and nothing written - neither in the working directory nor next to the inputs. No case trains or attacks: each must
be refused before any work starts.

A case is one row of CASES: (id, argv, expected text in the error line). Paths in argv are written as {world}/...
(the shared inputs below, made once) or relative to the case's own empty working directory.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from robustdistill.cli import main
from robustdistill.models import Classifier, save_checkpoint

MAX_LINES = 3


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit grey pixels and holds no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _png(width: int, height: int) -> bytes:
    import io

    stream = io.BytesIO()
    PILImage.new("L", (width, height)).save(stream, format="PNG")
    return stream.getvalue()


class _ZeroStride:
    """Unpickles to an ndarray whose shape claims `rows` CIFAR images over a single byte (strides 0)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __reduce__(self) -> tuple:
        return (np.ndarray, ((self.rows, 3072), np.dtype(np.uint8), b"\x00", 0, (0, 0)))


def _hf_dataset(folder: Path, cells: list[dict]) -> str:
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    good = _png(8, 8)
    rows = [{"bytes": good, "path": None}] * 9 + cells
    Dataset.from_dict({"image": rows, "label": [i % 2 for i in range(len(rows))]}, features=features).save_to_disk(str(folder))
    return str(folder)


def _suite(path: Path, body: str) -> str:
    path.write_text(body)
    return str(path)


CLEAN = '[data]\nkind = "digits"\n[[probes]]\nkind = "clean"\n'
PGD = '[data]\nkind = "digits"\n[threat_model]\neps = 0.1\n[[probes]]\nkind = "attack"\nattack = "pgd"\n'


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs every case reads: suites, recipes, presets, a state dict and hostile datasets."""
    root = tmp_path_factory.mktemp("world")
    (root / "binary.toml").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "user-file.txt").write_text("a user's file\n")
    tiny = Classifier.from_arch("cnn-tiny", num_classes=10, input_shape=(1, 8, 8))
    torch.save(tiny.network.state_dict(), root / "x.pt")
    save_checkpoint(tiny, root / "ckpt")
    suites = {
        "not-toml": "name = [\n",
        "wrong-type": 'seed = "zero"\n' + CLEAN,
        "unknown-key": "colour = 1\n" + CLEAN,
        "unknown-probe": '[data]\nkind = "digits"\n[[probes]]\nkind = "nope"\n',
        "gate-unknown-role": CLEAN + '[gates]\n"ghost.clean.accuracy" = { min = 0.5 }\n',
        "negative-samples": "samples = -5\n" + CLEAN,
        "seed-negative": "seed = -1\n" + CLEAN,
        "seed-2-64": "seed = 18446744073709551616\n" + CLEAN,
        "split-seed-negative": CLEAN.replace('kind = "digits"\n', 'kind = "digits"\nsplit_seed = -1\n', 1),
        "eps-inf": PGD.replace("eps = 0.1", "eps = inf"),
        "eps-1e308": PGD.replace("eps = 0.1", "eps = 1e308"),
        "eps-nan": PGD.replace("eps = 0.1", "eps = nan"),
        "l2-eps-over-diameter": PGD.replace("eps = 0.1", 'norm = "l2"\neps = 9.0'),
        "pgd-steps": PGD + "params = { steps = 1000000000 }\n",
        "pgd-restarts": PGD + "params = { restarts = 1000000 }\n",
        "pgd-seed": PGD + "params = { seed = -1 }\n",
        "pgd-eps-param": PGD + "params = { eps = 1e308 }\n",
        "cw-lr": PGD.replace('attack = "pgd"', 'attack = "cw-l2"') + "params = { eps = inf, lr = 1e308 }\n",
        "masking-steps": PGD.replace('kind = "attack"\nattack = "pgd"', 'kind = "masking"') + "more_steps = 1000000000\n",
        "masking-large-eps": PGD.replace('kind = "attack"\nattack = "pgd"', 'kind = "masking"') + "large_eps = 1e308\n",
        "curve-eps-inf": PGD.replace('kind = "attack"', 'kind = "curve"') + "eps = [0.1, inf]\n",
        "preset-eps-inf": f'[data]\nkind = "digits"\n[[probes]]\nuse = "{root}/preset-inf.toml"\n',
        "preset-binary": f'[data]\nkind = "digits"\n[[probes]]\nuse = "{root}/binary.toml"\n',
        "preset-steps": f'[data]\nkind = "digits"\n[[probes]]\nuse = "{root}/preset-steps.toml"\n',
        "imagefolder-huge": f'[data]\nkind = "imagefolder"\nroot = "{root}/images"\nimage_size = 8\n[[probes]]\nkind = "clean"\n',
        "hf-undecodable": f'[data]\nkind = "hf-disk"\nroot = "{root}/hf-undecodable"\nimage_size = 8\n[[probes]]\nkind = "clean"\n',
        "hf-bomb": f'[data]\nkind = "hf-disk"\nroot = "{root}/hf-bomb"\nimage_size = 8\n[[probes]]\nkind = "clean"\n',
        "hf-huge": f'[data]\nkind = "hf-disk"\nroot = "{root}/hf-huge"\nimage_size = 8\n[[probes]]\nkind = "clean"\n',
        "hf-not-image": f'[data]\nkind = "hf-disk"\nroot = "{root}/hf-not-image"\nimage_size = 8\n[[probes]]\nkind = "clean"\n',
        "cifar-zero-stride": f'[data]\nkind = "cifar10"\nroot = "{root}/cifar"\n[[probes]]\nkind = "clean"\n',
        "cifar-bin-oversize": f'[data]\nkind = "cifar10"\nroot = "{root}/cifar-bin"\n[[probes]]\nkind = "clean"\n',
    }
    for name, body in suites.items():
        _suite(root / f"{name}.toml", f'name = "{name}"\n' + body if not body.startswith("name") else body)
    (root / "preset-inf.toml").write_text('[threat_model]\neps = inf\n[[probes]]\nkind = "attack"\nattack = "fgsm"\n')
    (root / "preset-steps.toml").write_text(
        '[threat_model]\neps = 0.1\n[[probes]]\nkind = "attack"\nattack = "pgd"\nparams = { steps = 1000000000 }\n')
    (root / "recipe-unknown-key.toml").write_text('method = "standard"\narch = "cnn-tiny"\ncolour = 1\n')
    (root / "recipe-wrong-type.toml").write_text('method = "standard"\narch = "cnn-tiny"\nepochs = "ten"\n')
    (root / "recipe-lr.toml").write_text('method = "standard"\narch = "cnn-tiny"\nlr = 1e308\n')
    # Image folder: one image over the pixel limit among ordinary ones.
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(6):
            (root / "images" / label / f"{i}.png").write_bytes(_png(8, 8))
    (root / "images" / "a" / "huge.png").write_bytes(_png(4100, 4100))
    # Hugging Face datasets: undecodable bytes, a decompression bomb's header, a path to a file that is no image.
    (root / "not-an-image.png").write_text("just text\n")
    _hf_dataset(root / "hf-undecodable", [{"bytes": b"\x00 not an image", "path": None}])
    _hf_dataset(root / "hf-bomb", [{"bytes": _png_header_only(20_000, 20_000), "path": None}])  # PIL's bomb check
    _hf_dataset(root / "hf-huge", [{"bytes": _png_header_only(5_000, 5_000), "path": None}])  # under PIL's, over ours
    _hf_dataset(root / "hf-not-image", [{"bytes": None, "path": str(root / "not-an-image.png")}])
    # CIFAR-10 python batches of which one is a zero-stride array claiming 10,001 images (30 MB from 200 bytes).
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [i % 10 for i in range(20)]}
        if name == "data_batch_1":
            batch = {b"data": _ZeroStride(10_001), b"labels": [i % 10 for i in range(10_001)]}
        with open(cifar / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    # CIFAR-10 binary batches, one of 10,001 records (the format holds 10,000): a sparse file, no disk used.
    binary = root / "cifar-bin" / "cifar-10-batches-bin"
    binary.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (binary / name).write_bytes(bytes(3073 * 10))
    os.truncate(binary / "data_batch_3.bin", 3073 * 10_001)
    return root


SUITE_CASES = [
    # (id, expected text in the error line); the suite is {world}/<id>.toml, audited with a checkpoint as both models
    ("not-toml", "not valid TOML"),
    ("wrong-type", "seed"),
    ("unknown-key", "colour"),
    ("unknown-probe", "probes[0].kind"),
    ("gate-unknown-role", "ghost"),
    ("negative-samples", "samples"),
    ("seed-negative", "seed"),
    ("seed-2-64", "seed"),
    ("split-seed-negative", "data.split_seed"),
    ("eps-inf", "threat_model.eps"),
    ("eps-1e308", "threat_model.eps"),
    ("eps-nan", "threat_model.eps"),
    ("l2-eps-over-diameter", "threat_model.eps"),
    ("pgd-steps", "probes[0].params.steps"),
    ("pgd-restarts", "probes[0].params.restarts"),
    ("pgd-seed", "probes[0].params.seed"),
    ("pgd-eps-param", "probes[0].params.eps"),
    ("cw-lr", "probes[0].params.lr"),
    ("curve-eps-inf", "probes[0].eps[1]"),
    ("masking-steps", "probes[0].more_steps"),
    ("masking-large-eps", "probes[0].large_eps"),
    ("preset-eps-inf", "eps"),
    ("preset-binary", "not UTF-8 text"),
    ("preset-steps", "steps"),
    ("imagefolder-huge", "over the limit"),
    ("hf-undecodable", "data.image_column"),
    ("hf-bomb", "data.image_column"),
    ("hf-huge", "over the limit"),
    ("hf-not-image", "cannot read image"),
    ("cifar-zero-stride", "data.root: wrong format"),
    ("cifar-bin-oversize", "data.root: wrong format"),
]

REPO = Path(__file__).resolve().parents[2]
RECIPE = f"{REPO}/defenses/digits-standard.toml"
PGD_AT = f"{REPO}/defenses/digits-pgd-at.toml"

CASES = [
    *[(f"suite-{name}", ["audit", "{world}/" + f"{name}.toml", "--teacher", "{world}/ckpt", "--student", "{world}/ckpt"],
       expected) for name, expected in SUITE_CASES],
    ("suite-not-utf8", ["audit", "{world}/binary.toml"], "not UTF-8 text"),
    ("audit-samples-negative", ["audit", f"{REPO}/audits/demo-quick.toml", "--samples", "-3"], "--samples"),
    ("audit-state-dict-needs-arch", ["audit", f"{REPO}/audits/demo-quick.toml", "--teacher", "{world}/x.pt",
                                     "--student", "{world}/x.pt"], "--arch"),
    ("audit-missing-checkpoint", ["audit", f"{REPO}/audits/demo-quick.toml", "--teacher", "checkpoints/nope",
                                  "--student", "checkpoints/nope"], "no such file or directory"),
    ("audit-unknown-arch", ["audit", f"{REPO}/audits/demo-quick.toml", "--student", "{world}/x.pt", "--arch", "cnn-tny"],
     "--arch"),
    ("audit-arch-unknown-role", ["audit", f"{REPO}/audits/demo-quick.toml", "--teacher", "{world}/x.pt", "--student",
                                 "{world}/x.pt", "--arch", "ghost=cnn-tiny"], "ghost"),
    ("audit-input-shape-huge", ["audit", f"{REPO}/audits/demo-quick.toml", "--student", "{world}/x.pt",
                                "--input-shape", "1,99999,99999"], "--input-shape"),
    ("audit-num-classes-bad", ["audit", f"{REPO}/audits/demo-quick.toml", "--student", "{world}/x.pt",
                               "--num-classes", "ten"], "--num-classes"),
    ("audit-out-is-a-file", ["audit", "{world}/../cli-out/clean.toml", "--out", "{world}/user-file.txt"], "out"),
    ("audit-out-under-a-file", ["audit", "{world}/../cli-out/clean.toml", "--out", "{world}/user-file.txt/run"], "out"),
    ("audit-out-under-proc", ["audit", "{world}/../cli-out/clean.toml", "--out", "/proc/robustdistill-run"], "out"),
    ("audit-out-user-folder", ["audit", "{world}/../cli-out/clean.toml", "--out", "{world}"], "out"),
    ("train-not-utf8", ["train", "standard", "--config", "{world}/binary.toml"], "not UTF-8 text"),
    ("train-unknown-key", ["train", "standard", "--config", "{world}/recipe-unknown-key.toml"], "colour"),
    ("train-wrong-type", ["train", "standard", "--config", "{world}/recipe-wrong-type.toml"], "epochs"),
    ("train-lr-file", ["train", "standard", "--config", "{world}/recipe-lr.toml"], "lr"),
    ("train-lr", ["train", "standard", "--config", RECIPE, "--set", "lr=1e308"], "lr"),
    ("train-lr-inf", ["train", "standard", "--config", RECIPE, "--set", "lr=inf"], "lr"),
    ("train-epochs-huge", ["train", "standard", "--config", RECIPE, "--set", "epochs=1000000000"], "epochs"),
    ("train-guard-squeeze-epochs-huge", ["train", "guard", "--config", f"{REPO}/defenses/digits-guard.toml", "--set",
                                         "squeeze.epochs=1000000000"], "squeeze.epochs"),
    ("train-seed-negative", ["train", "standard", "--config", RECIPE, "--set", "seed=-1"], "seed"),
    ("train-seed-2-64", ["train", "standard", "--config", RECIPE, "--set", "seed=18446744073709551616"], "seed"),
    ("train-eps-inf", ["train", "pgd-at", "--config", PGD_AT, "--set", "eps=inf"], "eps"),
    ("train-eps-1e308", ["train", "pgd-at", "--config", PGD_AT, "--set", "eps=1e308"], "eps"),
    ("train-attack-steps", ["train", "pgd-at", "--config", PGD_AT, "--set",
                            "attack_steps=1000000000"], "attack_steps"),
    ("train-subset-seed", ["train", "standard", "--config", RECIPE, "--set", "train_subset_seed=-1"], "train_subset_seed"),
    ("train-split-seed", ["train", "standard", "--config", RECIPE, "--set", "data.split_seed=-1"], "data.split_seed"),
    ("train-guard-recover-lr", ["train", "guard", "--config", f"{REPO}/defenses/digits-guard.toml", "--set", "recover.lr=1e308"],
     "recover.lr"),
    ("train-step-size-negative", ["train", "pgd-at", "--config", PGD_AT, "--set", "attack_step_size=-1"],
     "attack_step_size"),
    ("train-network-too-large", ["train", "standard", "--config", RECIPE, "--set", "arch_params={width=100000000}"],
     "arch_params"),
    ("train-out-is-a-file", ["train", "standard", "--config", RECIPE, "--out", "{world}/user-file.txt"], "out"),
    ("train-out-under-proc", ["train", "standard", "--config", RECIPE, "--out", "/proc/robustdistill-ckpt"], "out"),
    ("train-device-unknown", ["train", "standard", "--config", RECIPE, "--device", "tpu"], "device"),
    ("demo-device-unknown", ["demo", "--quick", "--device", "tpu", "--out", "demo-out"], "--device"),
    ("threads-zero", ["--threads", "0", "list"], "--threads"),
    ("proard-select-seed", ["proard", "select", "{world}/ckpt", "--budget-params", "100", "--seed", "-1"], "--seed"),
    ("proard-select-evaluations", ["proard", "select", "{world}/ckpt", "--budget-params", "100", "--evaluations",
                                   "1000000000"], "--evaluations"),
    ("proard-export-calibration", ["proard", "export", "{world}/ckpt", "--subnet", "largest", "--out", "sub",
                                   "--calibration-images", "0"], "--calibration-images"),
]


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under the roots, with size and mtime: what a case must leave exactly as it was."""
    listing = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.stat()
            listing[str(path)] = (stat.st_size if path.is_file() else -1, stat.st_mtime_ns)
    return listing


@pytest.fixture(scope="module")
def clean_suite(world: Path) -> Path:
    folder = world.parent / "cli-out"
    folder.mkdir(exist_ok=True)
    (folder / "clean.toml").write_text('name = "clean"\n' + CLEAN + f'[pipeline]\nteacher = "{world}/ckpt"\nstudent = "{world}/ckpt"\n')
    return folder


@pytest.mark.parametrize(("argv", "expected"), [pytest.param(argv, expected, id=name) for name, argv, expected in CASES])
def test_bad_input_exits_2_before_any_work(argv: list[str], expected: str, world: Path, clean_suite: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # default --out folders (runs/..., checkpoints/...) land here
    watched = [tmp_path, world, clean_suite]
    before = _tree(*watched)
    argv = [a.replace("{world}", str(world)) for a in argv]
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert 1 <= len(lines) <= MAX_LINES, err
    assert expected in lines[-1], err
    assert _tree(*watched) == before, "a refused input left something behind"
    for i, arg in enumerate(argv[:-1]):
        if arg == "--out" and not argv[i + 1].startswith(str(world)):
            assert not Path(argv[i + 1]).exists()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param(["--threads", "100000", "list"], {}, "--threads", id="threads-100000"),
        pytest.param(["list"], {"ROBUSTDISTILL_THREADS": "abc"}, "ROBUSTDISTILL_THREADS", id="threads-env-not-a-number"),
        pytest.param(["list"], {"ROBUSTDISTILL_THREADS": "100000"}, "ROBUSTDISTILL_THREADS", id="threads-env-too-many"),
    ],
)
def test_thread_counts_exit_2_in_a_fresh_process(argv: list[str], env: dict[str, str], expected: str, tmp_path: Path) -> None:
    # A subprocess: today's code segfaults on --threads 100000, which would take the test runner with it.
    result = subprocess.run([sys.executable, "-m", "robustdistill", *argv], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, **env})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and 1 <= len(lines) <= MAX_LINES, result.stderr
    assert expected in lines[-1]
    assert list(tmp_path.iterdir()) == []
