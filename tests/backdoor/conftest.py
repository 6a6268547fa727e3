"""The backdoor tests' detector, prompts and draws. Their models - a clean t2i model, the patch backdoor planted in it
by badt2i, and that backdoor removed by skd-cag - are session fixtures of tests/conftest.py (the audit tests use them
too), trained once per session on the digits (~55 s on one thread in all, with the suite's pinned kernels).

Each is its recipe (defenses/digits-t2i.toml, digits-badt2i-patch.toml, digits-skd-cag-patch.toml) run shorter: the
clean model 5 of 15 epochs on half the train split, the injector 5 of 10 epochs at batch 32 (the same images, twice
the steps), the defence 3 x 30 of 5 x 40 steps. Measured (seed 0, 100 prompts): the backdoor draws the patch for
88% of triggered prompts and 13% of clean ones; after the defence 13% and 5%. Shorter runs plant a backdoor that
also fires on clean prompts (batch 64: 80% triggered, 30% clean), and SKD-CAG, whose teacher is the backdoored
model on the clean prompt, can only bring the triggered rate down to that clean rate. A narrower UNet (channels
[16, 32]) hardly told the trigger apart at all (52% triggered, 36-38% clean).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backdoor_settings import TRIGGER  # this folder (on sys.path under pytest)


@pytest.fixture(scope="session")
def digits_train() -> torch.Tensor:
    from robustdistill.data import DataSpec, load_split

    return load_split(DataSpec(), "train").x


@pytest.fixture(scope="session")
def patch_detector(digits_train: torch.Tensor):
    from robustdistill.attacks.backdoor import fit_detector

    return fit_detector("patch", digits_train, seed=0)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Every caption of every digit, twice: 100 prompts."""
    from robustdistill.trainers.t2i import prompt_table

    return prompt_table()[1:] * 2


@pytest.fixture(scope="session")
def draws(prompts: list[str], patch_detector, clean_t2i: Path, backdoored_patch: Path, defended_patch: Path):
    """Each model's clean and triggered samples of the prompts (10 DDIM steps, seed 1: the same noise for all)."""
    from robustdistill.attacks.backdoor import attack_success
    from robustdistill.models.diffusion import load_diffusion_model

    return {name: attack_success(load_diffusion_model(path), patch_detector, prompts, TRIGGER, seed=1, steps=10)
            for name, path in (("clean", clean_t2i), ("backdoored", backdoored_patch), ("defended", defended_patch))}
