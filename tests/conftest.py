"""Shared test set-up: offline Hugging Face, throwaway caches, and real tiny models trained once per session."""

from __future__ import annotations

import os
import sys
import tempfile

# Set before anything imports huggingface_hub or matplotlib: nothing may be downloaded, nothing written to ~.
_CACHE = tempfile.mkdtemp(prefix="robustdistill-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_CACHE, "hf")
os.environ["ROBUSTDISTILL_CACHE"] = os.path.join(_CACHE, "robustdistill")  # LiRA shadow models
os.environ["MPLCONFIGDIR"] = os.path.join(_CACHE, "mpl")
os.environ.setdefault("MPLBACKEND", "Agg")

from collections.abc import Callable, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from robustdistill import reproducibility  # noqa: E402 - imports no torch

# Pinned CPU kernels (robustdistill/reproducibility.py), set before anything imports torch: the trained test models,
# and so the thresholds on them, are the same on every x86 CPU with AVX2. ROBUSTDISTILL_REPRODUCIBLE=0 runs the suite
# on this CPU's native kernels instead (how the thresholds were checked on AVX-512).
os.environ.setdefault(reproducibility.ENV_VAR, "1")
if reproducibility.requested():
    reproducibility.pin()

import torch  # noqa: E402

# The test models are tiny: one thread is as fast as two, and immune to oversubscription on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def test_seed() -> int:
    """The seed of the trained test models: 0, or $ROBUSTDISTILL_TEST_SEED to check that a threshold holds across
    seeds, not just for the one it was tuned on."""
    return int(os.environ.get("ROBUSTDISTILL_TEST_SEED", "0"))


def snapshot_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (its path relative to ``root``, in POSIX form -> its bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_users_folder(folder: Path, files: Mapping[str, str | bytes]) -> dict[str, bytes]:
    """Create ``folder`` (and its parents) holding a user's own ``files`` (name -> text or bytes); returns its
    snapshot."""
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return snapshot_of(folder)


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, bytes]]:
    """``snapshot(root)``: every file under ``root`` (relative POSIX path -> bytes), to compare before and after a
    write that must be refused."""
    return snapshot_of


@pytest.fixture(scope="session")
def plant_users_files() -> Callable[[Path, Mapping[str, str | bytes]], dict[str, bytes]]:
    """``plant_users_files(folder, {name: content})``: a new folder holding a user's own files, where robustdistill is
    about to write; returns its snapshot."""
    return make_users_folder


# The diffusion teacher of the diffusion tests: defenses/digits-ddpm.toml on the whole train split, a narrower UNet, 30 epochs
# (~30 s on one thread); its 20-step DDIM samples are read as the digit asked for ~90% of the time.
TINY_DDPM = ["device=cpu", "epochs=30", "channels=[16,32]", "train_fraction=1.0"]


def fit_interrupted(trainer, out: Path, after_epoch: int = 1) -> None:
    """Run ``trainer.fit(out)`` and stop it, as a Ctrl-C between epochs would, once the state of epoch
    ``after_epoch`` is saved (a trainer whose state records its ``epoch``: the diffusion trainers')."""
    save_state = trainer.save_state

    def stop(path: Path, payload: dict) -> None:
        save_state(path, payload)
        if payload["epoch"] == after_epoch:
            raise KeyboardInterrupt

    trainer.save_state = stop
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(out)


@pytest.fixture(scope="session")
def interrupt() -> Callable[..., None]:
    """``interrupt(trainer, out, after_epoch=1)``: :func:`fit_interrupted`."""
    return fit_interrupted


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real class-conditional DDPM trained on the digits train split (1000 timesteps, a null class)."""
    from robustdistill import trainers

    repo = Path(__file__).resolve().parents[1]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("tiny-ddpm") / "ddpm"
        return trainers.create("ddpm", recipe=repo / "defenses" / "digits-ddpm.toml", overrides=TINY_DDPM).fit(out)
    finally:
        torch.set_num_threads(previous)


# The unlearned student of the diffusion tests: defenses/digits-sfd.toml (forget 0, override 1, the paper's weights)
# distilled from tiny_ddpm for 1/4 of its steps at half its batch (~15 s on one thread); it draws a 1 when asked for a
# 0 and keeps the other digits (tests/defenses/test_sfd.py measures both).
TINY_SFD = ["device=cpu", "epochs=2", "steps_per_epoch=50", "batch_size=32", "forget_class=0", "override_class=1"]


@pytest.fixture(scope="session")
def tiny_sfd(tiny_ddpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robustdistill import trainers

    repo = Path(__file__).resolve().parents[1]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("tiny-sfd") / "sfd"
        return trainers.create("sfd", recipe=repo / "defenses" / "digits-sfd.toml",
                               overrides=[*TINY_SFD, f"teacher={tiny_ddpm}"]).fit(out)
    finally:
        torch.set_num_threads(previous)



# The backdoor tests' models (tests/backdoor/conftest.py says why these lengths): a clean t2i model, the patch backdoor
# planted in it (badt2i), and that backdoor removed (skd-cag); the audit tests use them too.
sys.path.insert(0, str(Path(__file__).parent / "backdoor"))
import backdoor_settings  # noqa: E402


def _fit(method: str, name: str, overrides: list[str], out: Path) -> Path:
    from robustdistill import trainers

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trainers.create(method, recipe=backdoor_settings.recipe(name), overrides=overrides).fit(out)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def clean_t2i(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit("t2i", "digits-t2i", backdoor_settings.CLEAN, tmp_path_factory.mktemp("backdoor") / "clean")


@pytest.fixture(scope="session")
def backdoored_patch(clean_t2i: Path) -> Path:
    return _fit("badt2i", "digits-badt2i-patch", [*backdoor_settings.BACKDOOR, f"model={clean_t2i}"],
                clean_t2i.parent / "badt2i")


@pytest.fixture(scope="session")
def defended_patch(backdoored_patch: Path) -> Path:
    return _fit("skd-cag", "digits-skd-cag-patch", [*backdoor_settings.DEFENCE, f"model={backdoored_patch}"],
                backdoored_patch.parent / "skd-cag")
