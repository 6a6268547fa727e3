"""Teacher checkpoints for distillation: load one, or train it first from its recipe when it is missing."""

from __future__ import annotations

import logging
from pathlib import Path

from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, load_model

log = logging.getLogger(__name__)


def ensure_teacher(path: str, recipe: str | None, field: str = "teacher") -> Path:
    """Return ``path``; if it does not exist and ``recipe`` is given, train the teacher there first."""
    target = Path(path)
    if (target / "config.json").exists() or target.is_file():
        return target
    if not recipe:
        raise UserInputError(field, f"no checkpoint at {target}", f"train one first, or set {field}_recipe to a recipe that trains it")
    from robustdistill.trainers import train_from_recipe

    log.info("teacher %s not found: training it from %s", target, recipe)
    return train_from_recipe(recipe, out=target)


def load_teacher(path: Path, field: str = "teacher") -> Classifier:
    model = load_model(path)
    if not isinstance(model, Classifier):
        raise UserInputError(field, f"{path} is not an image classifier checkpoint", "point at a robustdistill classifier checkpoint")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()
