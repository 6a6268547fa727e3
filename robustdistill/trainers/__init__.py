"""Trainers that produce students. ``robustdistill train METHOD --config FILE`` runs one."""

from __future__ import annotations

from pathlib import Path

from robustdistill.trainers import ard, defensive_distillation, guard, kd, mtard, pgd_at, proard, standard, trades  # noqa: F401  (registration)
from robustdistill.trainers import lm, lm_kd  # noqa: F401  (registration: sft, seq-kd, logit-kd)
from robustdistill.trainers import ddpm, sid  # noqa: F401  (registration: the diffusion trainers)
from robustdistill.trainers import badt2i, t2i  # noqa: F401  (badt2i: the backdoor injector)
from robustdistill.defenses import sfd, skd_cag  # noqa: F401  (last: the defences build on the trainers above)
from robustdistill.trainers.base import TRAINERS, Trainer
from robustdistill.trainers.config import TrainConfig, check_bounds, load_recipe, read_toml

__all__ = ["TRAINERS", "Trainer", "TrainConfig", "available", "create", "train_from_recipe"]


def available() -> list[str]:
    return TRAINERS.available()


def create(method: str, config: TrainConfig | None = None, *, recipe: str | Path | None = None,
           overrides: list[str] | None = None, threads: int | None = None) -> Trainer:
    """A trainer for ``method``, configured by a config object, or by a recipe file plus ``key=value`` overrides.

    ``threads``: CPU threads for torch while it trains; None for robustdistill's default, the CLI's (1 unless
    $ROBUSTDISTILL_THREADS or $OMP_NUM_THREADS say otherwise: see :mod:`robustdistill.threads`)."""
    from robustdistill.threads import requested

    requested(threads)  # a bad count fails here, before any recipe is read
    trainer_class = TRAINERS.get(method)
    if config is None:
        load = getattr(trainer_class, "recipe_loader", load_recipe)  # the language-model trainers read their own
        config = load(trainer_class.config_class, recipe, overrides or [], method)
    else:
        check_bounds(config)  # a config built in Python gets the same bounds as a recipe
    trainer = trainer_class(config)
    trainer.threads = threads
    return trainer


def from_recipe(recipe: str | Path, overrides: list[str] | None = None, threads: int | None = None,
                field: str = "--config") -> Trainer:
    """The trainer of the method a recipe names (its ``method`` key), its config read and checked."""
    from robustdistill.errors import UserInputError

    method = read_toml(recipe, field).get("method")
    if not method:
        raise UserInputError(field, f"{recipe} does not say which method it trains", "add method = '...' at its top")
    return create(method, recipe=recipe, overrides=overrides, threads=threads)


def train_from_recipe(recipe: str | Path, out: str | Path, overrides: list[str] | None = None, resume: bool = False,
                      threads: int | None = None) -> Path:
    """Train the method a recipe names (its ``method`` key) and write the checkpoint to ``out``; ``threads`` as
    in :func:`create`."""
    return from_recipe(recipe, overrides, threads).fit(out, resume=resume)
