"""The unit context of the diffusion family: the models, the real evaluation images, and the class-conditional
samples already generated this run - drawn once per (role, per-class count, steps, guidance, seed) and shared by
every probe that asks for the same ones."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robustdistill.audits.probes.base import EvalContext


@dataclass(frozen=True)
class Samples:
    """``per_class`` generated images of each class, class by class: images (n, C, H, W) in [0, 1], their
    labels, and the seconds each class's batch took (for samples per second)."""

    images: torch.Tensor
    labels: torch.Tensor
    seconds: tuple[float, ...]
    steps: int

    @property
    def per_second(self) -> float:
        return len(self.labels) / max(sum(self.seconds), 1e-9)


def class_seed(seed: int, label: int) -> int:
    """The generation seed of one class's batch: every class draws its own noise (sample i of class 3 does not
    start from the same noise as sample i of class 4), and the same for a given run seed."""
    return int(np.random.SeedSequence([seed, label]).generate_state(1)[0])


@dataclass(kw_only=True)
class DiffusionContext(EvalContext):
    """What a diffusion unit sees: the models, the family's DiffusionData (``data``) and the samples generated."""

    data: Any
    _samples: dict[tuple[str, int, int, float | None, int], Samples] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.data)

    def steps_for(self, role: str, steps: int) -> int:
        """The sampling steps ``role`` runs: ``steps`` for a multi-step model, 1 for a one-step generator."""
        return 1 if getattr(self.models[role], "one_step_t", None) is not None else steps

    def samples(self, role: str, per_class: int, steps: int, guidance: float | None = None,
                seed: int | None = None) -> Samples:
        """``per_class`` samples of every class of the data from ``role`` (its :meth:`steps_for` ``steps``), timed
        class by class; generated once per run for the same arguments."""
        from robustdistill.models.diffusion_sampling import generate

        seed = self.seed if seed is None else seed
        steps = self.steps_for(role, steps)
        key = (role, per_class, steps, guidance, seed)
        if key not in self._samples:
            model = self.models[role]
            options: dict[str, Any] = {"guidance": guidance} if guidance is not None else {}
            images, labels, seconds = [], [], []
            for label in range(self.data.num_classes):
                wanted = torch.full((per_class,), label, dtype=torch.long)
                start = time.perf_counter()
                with torch.no_grad():
                    drawn = generate(model, labels=wanted, steps=steps, seed=class_seed(seed, label),
                                     batch_size=min(self.batch_size, 256), **options)
                seconds.append(time.perf_counter() - start)
                drawn = drawn.detach().float().cpu()
                if not torch.isfinite(drawn).all():
                    self.note_non_finite(role, f"non-finite pixels in its samples of class {label} ({steps} steps)")
                images.append(torch.nan_to_num(drawn).clamp(0, 1))
                labels.append(wanted)
            self._samples[key] = Samples(torch.cat(images), torch.cat(labels), tuple(seconds), steps)
        return self._samples[key]
