"""The diffusion family: a UNet with its scheduler and conditioning (robustdistill.models.DiffusionModel).

Evaluation data is an image split (``[data] kind = "digits"`` and its ``split``, ``samples`` images drawn with the
suite's seed): the real images generated samples are compared with, and their labels. Membership probes resolve a
model's recorded ``train_members`` (positions in the source pool of the images it was trained on) against the same
pool, exactly as the classifier family's membership probes do (robustdistill.attacks.privacy.membership).

A model fits when it generates images of the data's shape, conditioned on the data's classes: probes ask each model
for samples of every class, and compare them with the real images of that split.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustdistill.audits.families.base import FAMILIES, EvalData, ModelFamily, Plan, instance_if_loaded
from robustdistill.audits.families.classifier import role_field
from robustdistill.errors import UserInputError


@dataclass(frozen=True)
class DiffusionData:
    """The suite's real images (``images``, an ImageSplit of its split) and the spec they came from."""

    spec: Any
    split: str
    images: Any

    @property
    def fingerprint(self) -> str:
        return self.images.fingerprint

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.images.input_shape

    @functools.cached_property
    def pool(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every image of the source pool as (x, y, positions), in position order: what recorded training members
        (positions) name. Loaded once per audit."""
        from robustdistill.data import load_splits

        parts = list(load_splits(self.spec).values())
        positions = torch.cat([p.indices for p in parts])
        order = torch.argsort(positions)
        return torch.cat([p.x for p in parts])[order], torch.cat([p.y for p in parts])[order], positions[order]

    def ground_truth(self, role: str, model: Any, where: str, fix: str) -> Any:
        """The members and non-members of ``role``'s training (robustdistill.attacks.privacy.membership's
        GroundTruth) from its recorded provenance, as the classifier membership probes resolve them; raises
        UserInputError naming ``where`` when nothing was recorded or the data changed since."""
        from robustdistill.attacks.privacy.membership import from_provenance

        return from_provenance(role, getattr(model, "provenance", None) or {}, where, fix)

    def __len__(self) -> int:
        return len(self.images)


@FAMILIES.register("diffusion")
class DiffusionFamily(ModelFamily):
    name = "diffusion"
    title = "a diffusion model"

    def accepts(self, model: Any) -> bool:
        return instance_if_loaded(model, "robustdistill.models.diffusion", "DiffusionModel")

    def load_data(self, suite: Any) -> EvalData:
        from robustdistill.data import DataSpec, load_split

        if not isinstance(suite.data, DataSpec):
            raise UserInputError("data.kind", f"{suite.data.kind!r} is instruction data; diffusion probes compare "
                                 "generated images with real ones", "use kind = 'digits'")
        images = load_split(suite.data, suite.split).subset(suite.samples, seed=suite.seed)
        return DiffusionData(suite.data, suite.split, images)

    def check_models(self, models: Mapping[str, Any], data: Any, suite: Any) -> None:
        """Each model must draw images of the data's shape, conditioned on its classes (class-conditional) or on
        text; which conditioning a probe needs, the probe checks (:func:`require_conditioning`)."""
        for role, model in models.items():
            source = model.path or "the model"
            if model.sample_shape != data.input_shape:
                raise UserInputError(role_field(role), f"{source} generates {model.sample_shape} images but the "
                                     f"{suite.data.kind} data is {data.input_shape}",
                                     "audit the model with the data it was trained on")
            if model.conditioning not in ("class", "text"):
                raise UserInputError(role_field(role), f"{source} is conditioned on {model.conditioning!r}: the "
                                     "diffusion probes ask for samples of each class, or for prompts",
                                     "audit a class-conditional model (ddpm, sid, sfd) or a text-to-image one (t2i)")
            classes = model.num_classes  # the loader's: recorded, else the UNet's class embeddings
            if model.conditioning == "class" and (classes is None or classes < data.num_classes):
                raise UserInputError(role_field(role), f"{source} knows {classes} classes but the {suite.data.kind} "
                                     f"data has {data.num_classes}", "audit the model with the data it was trained on")

    def context(self, data: Any, models: Mapping[str, Any], suite: Any, artifacts: Path, plan: Plan) -> Any:
        from robustdistill.audits.probes.diffusion.context import DiffusionContext

        return DiffusionContext(models=dict(models), seed=suite.seed, batch_size=suite.batch_size,
                                artifacts=artifacts, data=data)


def require_conditioning(models: Mapping[str, Any], conditioning: str, where: str) -> None:
    """Refuse, naming the model's role, a model a probe cannot ask: ``conditioning`` is "class" (samples of each
    class) or "text" (samples for prompts)."""
    for role, model in models.items():
        if model.conditioning != conditioning:
            fix = ("audit class-conditional models (ddpm, sid, sfd) with it" if conditioning == "class"
                   else "audit text-to-image models (t2i, badt2i, skd-cag) with it")
            raise UserInputError(role_field(role), f"{model.path or 'the model'} is conditioned on "
                                 f"{model.conditioning!r}, but {where} needs {conditioning} conditioning", fix)
