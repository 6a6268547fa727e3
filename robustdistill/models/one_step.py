"""One-step generation from a distilled diffusion UNet (the SiD / SFD generator).

The generator is a DDPM UNet run once, at a fixed timestep t_init (Zhou et al. 2024, SiD; Chen et al. 2025, SFD):
pure noise scaled to that step's noise level, x_init = sqrt(1 - abar) z, is denoised in a single step to the
UNet's x0 prediction, x_g = x_init / sqrt(abar) - sqrt(1/abar - 1) eps_theta(x_init, t_init, c), abar = abar_{t_init}.
The same x0 prediction from a noisy x_t at any t is the "denoised estimate" f(x_t) that SiD's losses compare.
"""

from __future__ import annotations

import torch

from robustdistill.errors import UserInputError
from robustdistill.models.diffusion import DiffusionModel
from robustdistill.models.diffusion_sampling import alphas_cumprod as alpha_bar
from robustdistill.models.diffusion_sampling import predict_noise, to_pixels


def denoised(model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor) -> torch.Tensor:
    """f(x_t, c) = (x_t - sqrt(1 - abar_t) eps_hat(x_t, t, c)) / sqrt(abar_t): the model's x0 estimate (model
    space, not clamped: SiD's losses need the raw estimate). Differentiable in ``x_t`` and the UNet's weights."""
    abar = alpha_bar(model, t, x_t)
    eps = predict_noise(model, x_t, t, labels=labels)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def one_step_generate(model: DiffusionModel, labels: torch.Tensor, z: torch.Tensor, t_init: int) -> torch.Tensor:
    """x_g in model space ([-1, 1] for a trained generator, not clamped), differentiable: what the SiD trainer
    backpropagates through. ``z``: standard normal noise of shape (n, *model.sample_shape)."""
    x_init = (1 - alpha_bar(model, t_init, z)).sqrt() * z
    return denoised(model, x_init, t_init, labels)


@torch.no_grad()
def one_step_sample(model: DiffusionModel, labels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (float32, (n, c, h, w)) from a one-step generator (``model.one_step_t`` set) for class
    ``labels`` and noise ``z``; the generate() of robustdistill.models.diffusion_sampling calls this."""
    t_init = getattr(model, "one_step_t", None)
    if t_init is None:
        raise UserInputError("model", f"{model.path} is not a one-step generator (its robustdistill.json has no "
                             "one_step)",
                             "sample a multi-step DDPM with robustdistill.models.diffusion_sampling.generate")
    device = model.device
    x_g = one_step_generate(model, labels.to(device), z.to(device), int(t_init))
    return to_pixels(x_g).float()
