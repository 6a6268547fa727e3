"""The diffusion family: a UNet with its scheduler and conditioning (robustdistill.models.DiffusionModel).

It recognises its models, so that a suite of classifier probes given a diffusion model is refused naming the probe
and the role; its probes, evaluation data (class labels or captions, sample seeds) and derived rows come with the
diffusion pipelines.
"""

from __future__ import annotations

from typing import Any

from robustdistill.audits.families.base import FAMILIES, ModelFamily, instance_if_loaded


@FAMILIES.register("diffusion")
class DiffusionFamily(ModelFamily):
    name = "diffusion"
    title = "a diffusion model"

    def accepts(self, model: Any) -> bool:
        return instance_if_loaded(model, "robustdistill.models.diffusion", "DiffusionModel")
