"""Shadow models for LiRA: the target's own recipe, retrained on chosen subsets of the population, cached on disk.

A shadow model is identified by (recipe, training data, seed) - plus its teacher for a distillation recipe - and
kept under ``<cache>/shadows/<key>/`` as an ordinary checkpoint directory, so a second audit (or a resumed one)
reuses every shadow already trained. The cache is ``$ROBUSTDISTILL_CACHE``, else ``$XDG_CACHE_HOME/robustdistill``,
else ``~/.cache/robustdistill``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustdistill.data import ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.reproducibility import kernels_key

log = logging.getLogger(__name__)

# Fields a shadow model overrides (or that cannot change what it learns): left out of its cache key.
NOT_IN_KEY = frozenset({"seed", "device", "threat_model", "teacher", "teacher_recipe", "train_fraction",
                        "train_subset_seed", "train_subset_rest", "val_robust", "val_attack_steps"})


def cache_root(override: str | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get("ROBUSTDISTILL_CACHE"):
        return Path(os.environ["ROBUSTDISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustdistill"


@dataclass(frozen=True)
class Recipe:
    """How a model was trained: a trainer method and its config (as recorded in provenance)."""

    method: str
    config: dict[str, Any]
    source: str

    @property
    def is_distillation(self) -> bool:
        """Trains from an external teacher checkpoint (defensive distillation trains its own)."""
        return bool(self.config.get("teacher")) and "teacher_recipe" in self.config

    @property
    def augment(self) -> str | None:
        return self.config.get("augment")

    def key_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in NOT_IN_KEY}


def recipe_from_provenance(provenance: Mapping[str, Any], source: str) -> Recipe | None:
    recipe = provenance.get("recipe")
    if not isinstance(recipe, Mapping) or not recipe.get("method") or not isinstance(recipe.get("config"), Mapping):
        return None
    return Recipe(str(recipe["method"]), dict(recipe["config"]), source)


def recipe_from_file(path: str, where: str) -> Recipe:
    """A recipe TOML (defenses/*.toml), validated by its trainer's config class."""
    from robustdistill.trainers import TRAINERS
    from robustdistill.trainers.config import config_to_dict, load_recipe, read_toml

    method = read_toml(path, where).get("method")
    if not method:
        raise UserInputError(where, f"{path} does not say which method it trains", "add method = '...' at its top")
    try:
        trainer_class = TRAINERS.get(method)
        config = load_recipe(trainer_class.config_class, path, [], method)
    except UserInputError as exc:
        raise UserInputError(f"{where} ({path}): {exc.field}", exc.problem, exc.fix) from None
    return Recipe(method, config_to_dict(config), str(path))


def shadow_key(recipe: Recipe, data: str, seed: int, teacher: str | None) -> str:
    # The kernels are part of what a shadow learned: a pinned audit must not reuse a shadow trained on AVX-512 ones.
    identity = {"method": recipe.method, "config": recipe.key_config(), "data": data, "seed": seed, "teacher": teacher,
                "kernels": kernels_key()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ShadowJob:
    """One shadow model to train (or find): ``train`` None means the recipe's own training data."""

    recipe: Recipe
    train: ImageSplit | None
    seed: int
    teacher: Path | None = None
    teacher_key: str | None = None

    @property
    def key(self) -> str:
        data = self.train.fingerprint if self.train is not None else "recipe"
        return shadow_key(self.recipe, data, self.seed, self.teacher_key)


def train_shadow(job: ShadowJob, root: Path, device: str) -> tuple[Path, bool]:
    """(checkpoint directory, whether it was trained now rather than found in the cache)."""
    from robustdistill.trainers import TRAINERS
    from robustdistill.trainers.config import build_config

    out = root / "shadows" / job.key
    if (out / "config.json").is_file():
        return out, False
    overrides: dict[str, Any] = {"seed": job.seed, "device": device, "threat_model": None}
    if job.train is not None:
        overrides |= {"train_fraction": 1.0, "train_subset_rest": False}
    if job.recipe.config.get("select_metric", "clean") in ("clean", "last"):
        overrides["val_robust"] = False  # robust validation only reports; skipping it changes nothing selected
    if job.teacher is not None:
        overrides |= {"teacher": str(job.teacher), "teacher_recipe": None}
    trainer_class = TRAINERS.get(job.recipe.method)
    config = build_config(trainer_class.config_class, {**job.recipe.config, **overrides})
    out.parent.mkdir(parents=True, exist_ok=True)
    with quiet("robustdistill.trainers", "robustdistill.models"):  # dozens of shadow runs: one line each, not 30
        trainer_class(config).fit(out, resume=True, train_data=job.train)
    return out, True


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
