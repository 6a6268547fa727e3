"""Noise prediction, forward noising and seeded sampling for robustdistill's diffusion models.

Every diffusion model here works in "model space", images scaled to [-1, 1] (the DDPM convention); callers hand
in and get back pixels in [0, 1]. Sampling is DDIM (Song et al. 2021) with diffusers' DDIMScheduler built from the
model's own training schedule, eta = 0 by default, so the same seed gives the same samples; a one-step generator
(``one_step_t`` set, robustdistill.models.one_step) is run once instead.

Classifier-free guidance (Ho & Salimans 2022) needs a model trained with a null class (the ddpm trainer's
``null_class``): eps = eps(x, null) + w (eps(x, c) - eps(x, null)); w = 1 is the plain conditional model.
"""

from __future__ import annotations

from typing import Any

import torch

from robustdistill.errors import UserInputError


def to_model_space(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1]."""
    return pixels * 2 - 1


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space -> [0, 1] pixels (clamped: a sample may overshoot)."""
    return (x.clamp(-1, 1) + 1) / 2


def predict_noise(model: Any, x_t: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor | None = None,
                  text: torch.Tensor | None = None) -> torch.Tensor:
    """eps_hat(x_t, t, condition): the UNet's noise prediction, conditioned on class ``labels`` (a class model) or
    text-encoder states ``text`` (a text model). Differentiable in ``x_t`` and the weights."""
    steps = torch.as_tensor(t, device=x_t.device).long()
    if steps.dim() == 0:
        steps = steps.expand(len(x_t))
    if model.conditioning == "class":
        if labels is None:
            raise UserInputError("labels", "a class-conditional model needs class labels", "pass labels=...")
        return model.unet(x_t, steps, class_labels=labels.to(x_t.device)).sample
    if model.conditioning == "text":
        if text is None:
            raise UserInputError("prompts", "a text-conditional model needs prompts",
                                 "pass text=model.encode_text(...)")
        return model.unet(x_t, steps, encoder_hidden_states=text).sample
    return model.unet(x_t, steps).sample


def alphas_cumprod(model: Any, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """abar_t of the model's training schedule for each timestep of ``t``, shaped to broadcast over ``like``."""
    table = model.scheduler.alphas_cumprod.to(device=like.device, dtype=like.dtype)
    values = table[torch.as_tensor(t, device=like.device).long()]
    return values.reshape(-1, *([1] * (like.dim() - 1))) if values.dim() else values


def add_noise(model: Any, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """The forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, differentiable in ``x0``."""
    abar = alphas_cumprod(model, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def denoising_loss(model: Any, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   labels: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
    """The simple DDPM loss (Ho et al. 2020): mean squared error of the noise prediction at x_t = q(x_t | x0, eps),
    conditioned on class ``labels`` or text-encoder states ``text``."""
    x_t = add_noise(model, x0, eps, t)
    return torch.nn.functional.mse_loss(predict_noise(model, x_t, t, labels=labels, text=text), eps)


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise of ``n`` samples, drawn on the CPU from ``seed``: the same on every device and for every
    batch size."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(int(seed)))


def guided_noise(model: Any, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                 guidance: float | None) -> torch.Tensor:
    """The noise prediction the sampler follows: conditional, or classifier-free guided with weight ``guidance``."""
    if guidance is None or guidance == 1.0:
        return predict_noise(model, x, t, labels=labels)
    null = torch.full_like(labels, int(model.null_class))
    both = predict_noise(model, torch.cat([x, x]), torch.cat([t, t]), labels=torch.cat([labels, null]))
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def ddim_scheduler(model: Any, steps: int) -> Any:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    total = int(scheduler.config.num_train_timesteps)
    if not 1 <= steps <= total:
        raise UserInputError("steps", f"{steps} is outside 1..{total} (the model's training timesteps)",
                             f"sample with 1 to {total} steps; 50 is usual")
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def ddim_sample(model: Any, labels: torch.Tensor, z: torch.Tensor, steps: int, guidance: float | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM from noise ``z`` (n, c, h, w) for class ``labels``: [0, 1] pixels, float32, on the model's device."""
    device = model.device
    scheduler = ddim_scheduler(model, steps)
    x = z.to(device)
    labels = labels.to(device)
    for t in scheduler.timesteps:
        eps = guided_noise(model, x, t.to(device).expand(len(x)), labels, guidance)
        x = scheduler.step(eps, t, x, eta=eta).prev_sample
    return to_pixels(x).float()


def check_guidance(model: Any, guidance: float | None) -> None:
    if guidance is not None and guidance != 1.0 and getattr(model, "null_class", None) is None:
        raise UserInputError("guidance", f"{model.path or 'the model'} was trained without a null class, so it "
                             "cannot be sampled with classifier-free guidance",
                             "leave guidance unset (or 1), or train the model with cond_drop > 0")


def generate(model: Any, labels: torch.Tensor, steps: int = 50, seed: int = 0, batch_size: int = 256,
             guidance: float | None = None, eta: float = 0.0) -> torch.Tensor:
    """Samples of class ``labels`` (n,) from a class-conditional model: [0, 1] pixels, float32, on the CPU.

    ``steps`` DDIM steps (ignored by a one-step generator); the noise comes from ``seed`` for all n samples at once,
    so the samples do not depend on ``batch_size`` or the device's batch order."""
    from robustdistill.models.one_step import one_step_sample

    if model.conditioning != "class":
        raise UserInputError("model", f"{model.path or 'the model'} is conditioned on {model.conditioning!r}, "
                             "not on class labels", "generate class-conditional samples from a ddpm or sid model")
    if batch_size < 1:
        raise UserInputError("batch_size", f"{batch_size} is not a positive batch size", "use e.g. 256")
    one_step = getattr(model, "one_step_t", None) is not None
    if one_step and guidance is not None and guidance != 1.0:
        raise UserInputError("guidance", f"{model.path or 'the model'} is a one-step generator: it draws in one pass, "
                             "with no conditional and unconditional predictions to mix", "leave guidance unset")
    check_guidance(model, guidance)
    labels = torch.as_tensor(labels).long().reshape(-1)
    z = initial_noise(len(labels), model.sample_shape, seed)
    parts = []
    for start in range(0, len(labels), batch_size):
        batch = slice(start, start + batch_size)
        if one_step:
            parts.append(one_step_sample(model, labels[batch], z[batch]).cpu())
        else:
            parts.append(ddim_sample(model, labels[batch], z[batch], steps, guidance, eta).cpu())
    if not parts:
        return torch.empty((0, *model.sample_shape))
    return torch.cat(parts)


def text_guided_noise(model: Any, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, empty: torch.Tensor | None,
                      guidance: float | None) -> torch.Tensor:
    """The noise prediction a text model's sampler follows: conditional on the prompts' states ``text``, or
    classifier-free guided with weight ``guidance`` against the empty prompt's states ``empty`` (1, tokens, width)."""
    if guidance is None or guidance == 1.0 or empty is None:
        return predict_noise(model, x, t, text=text)
    null = empty.expand(len(x), *empty.shape[1:])
    both = predict_noise(model, torch.cat([x, x]), torch.cat([t, t]), text=torch.cat([text, null]))
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


@torch.no_grad()
def ddim_sample_text(model: Any, prompts: list[str], z: torch.Tensor, steps: int, guidance: float | None = None,
                     eta: float = 0.0) -> torch.Tensor:
    """DDIM from noise ``z`` (n, c, h, w) for ``prompts`` (n): [0, 1] pixels, float32, on the model's device."""
    device = model.device
    scheduler = ddim_scheduler(model, steps)
    text = model.encode_text(list(prompts))
    guided = guidance is not None and guidance != 1.0
    empty = model.encode_text([""]) if guided else None
    x = z.to(device)
    for t in scheduler.timesteps:
        eps = text_guided_noise(model, x, t.to(device).expand(len(x)), text, empty, guidance)
        x = scheduler.step(eps, t, x, eta=eta).prev_sample
    return to_pixels(x).float()


def generate_from_prompts(model: Any, prompts: list[str], steps: int = 50, seed: int = 0, batch_size: int = 256,
                          guidance: float | None = None) -> torch.Tensor:
    """Samples of ``prompts`` from a text-conditional model: [0, 1] pixels, float32, on the CPU, one per prompt.

    DDIM with eta = 0 and ``steps`` steps; the noise comes from ``seed`` for all n samples at once (initial_noise),
    so the samples do not depend on ``batch_size``. ``guidance`` w != 1: classifier-free guidance with the empty
    prompt "" as the unconditional, eps("") + w (eps(prompt) - eps("")) - what a model trained with captions dropped
    to "" (the t2i trainer's ``cond_drop``) learns as "no caption"."""
    if getattr(model, "conditioning", None) != "text":
        raise UserInputError("model", f"{getattr(model, 'path', None) or 'the model'} is conditioned on "
                             f"{getattr(model, 'conditioning', None)!r}, not on text",
                             "generate from prompts with a text-to-image model (robustdistill train t2i)")
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise UserInputError("prompts", "must be a list of strings", 'pass e.g. ["the number 3"]')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError("batch_size", f"{batch_size} is not a positive batch size", "use e.g. 256")
    recipe = (getattr(model, "provenance", None) or {}).get("recipe") or {}
    if guidance is not None and guidance != 1.0 and (recipe.get("config") or {}).get("cond_drop") == 0:
        where = getattr(model, "path", None) or "the model"
        raise UserInputError("guidance", f"{where} was trained without empty prompts, so it "
                             "cannot be sampled with classifier-free guidance",
                             "leave guidance unset (or 1), or train the model with cond_drop > 0")
    prompts = list(prompts)
    ddim_scheduler(model, steps)  # a bad step count fails before any sampling
    z = initial_noise(len(prompts), model.sample_shape, seed)
    parts = [ddim_sample_text(model, prompts[start:start + batch_size], z[start:start + batch_size], steps,
                              guidance).cpu()
             for start in range(0, len(prompts), batch_size)]
    if not parts:
        return torch.empty((0, *model.sample_shape))
    return torch.cat(parts)
