"""Does a text-to-image model draw the backdoor target? Per-sample flags for triggered and clean prompts.

The same prompts are drawn twice from the same starting noise (one seed): clean, and with the trigger prepended.
The flags on the clean draws are the model's false-trigger rate (the detector's and the model's together); on the
triggered draws, the attack success. Keeping per-sample flags lets a probe put intervals on the rates and pair them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustdistill.attacks.backdoor.detectors import BackdoorDetector
from robustdistill.attacks.backdoor.targets import triggered_prompt


@dataclass
class BackdoorDraws:
    """The samples of the clean and the triggered prompts (same noise, in order) and the detector's flags on them."""

    clean: torch.Tensor
    triggered: torch.Tensor
    clean_flags: torch.Tensor
    triggered_flags: torch.Tensor

    @property
    def success_rate(self) -> float:
        return float(self.triggered_flags.float().mean()) if len(self.triggered_flags) else 0.0

    @property
    def false_trigger_rate(self) -> float:
        return float(self.clean_flags.float().mean()) if len(self.clean_flags) else 0.0


def draw_pair(model: Any, prompts: list[str], trigger: str, seed: int = 0, steps: int = 20,
              guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples of ``prompts``, samples of the triggered prompts), from the same noise."""
    from robustdistill.models.diffusion_sampling import generate_from_prompts

    triggered = [triggered_prompt(p, trigger) for p in prompts]
    clean = generate_from_prompts(model, list(prompts), steps=steps, seed=seed, guidance=guidance)
    return clean, generate_from_prompts(model, triggered, steps=steps, seed=seed, guidance=guidance)


def attack_success(model: Any, detector: BackdoorDetector, prompts: list[str], trigger: str, seed: int = 0,
                   steps: int = 20, guidance: float | None = None) -> BackdoorDraws:
    """Draw ``prompts`` clean and triggered from ``model`` and flag the samples that show the detector's target."""
    clean, triggered = draw_pair(model, prompts, trigger, seed, steps, guidance)
    return BackdoorDraws(clean=clean, triggered=triggered, clean_flags=detector.flags(clean),
                         triggered_flags=detector.flags(triggered))
