"""Deterministic DDIM steps (eta = 0) over the timestep levels the official DNF and DIRE code use.

Shared by DNF (noise predicted along the inversion trajectory) and DIRE (inversion followed by
reconstruction). The levels follow the official implementations, so a K-step DNF or an S-step
DIRE lands on the same timesteps as theirs:

* DNF: ``round(linspace(0, T, K+1))`` (T = 1000: 0, 200, ..., 1000 for K = 5). The noise is
  predicted at the first K levels; the last one is only the target of the final step, whose
  result DNF never uses, so no step is taken to it.
* DIRE: guided-diffusion's ``ddimS`` respacing, the first S multiples of the smallest stride that
  gives exactly S levels (0, 50, ..., 950 for S = 20). Inversion walks up from level 0 and its
  last step goes to alpha_bar = 0 (pure noise); reconstruction starts at the top level and its
  last step goes to alpha_bar = 1 (the predicted clean image). Every step clips the predicted x0
  to [-1, 1] and re-derives the noise from the clipped x0, as guided-diffusion's
  ``clip_denoised=True`` does.

Precision: the trajectory x_t and every DDIM step stay in float32 whatever the UNet's dtype; only
the UNet's input is cast to its dtype, and its output back. An fp16 / bf16 state loses the image
at the top levels, where x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) divides by sqrt(abar) ~ 0.006
(DIRE's level 950), and the error then compounds over the 2S steps. In float32 nothing is cast.
"""

from __future__ import annotations

import torch
from torch import nn


def dnf_levels(scheduler, num_steps: int) -> list[int]:
    """K+1 evenly spaced timesteps from 0 to T (the official DNF sequence)."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    total = len(scheduler.alphas_cumprod)
    return torch.linspace(0, total, num_steps + 1).round().long().tolist()


def dire_levels(scheduler, num_steps: int) -> list[int]:
    """S timesteps ``range(0, T, stride)`` with the smallest stride giving exactly S (``ddimS``)."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    total = len(scheduler.alphas_cumprod)
    for stride in range(1, total + 1):
        levels = list(range(0, total, stride))
        if len(levels) == num_steps:
            return levels
    raise ValueError(f"cannot create exactly {num_steps} evenly spaced steps out of {total}")


def predict_noise(unet: nn.Module, x: torch.Tensor, timestep: int) -> torch.Tensor:
    """The UNet's noise for ``x`` at ``timestep``, computed in the UNet's dtype, returned in ``x``'s."""
    steps = torch.full((x.shape[0],), int(timestep), device=x.device, dtype=torch.long)
    weights = next(iter(unet.parameters()), None)
    model_dtype = x.dtype if weights is None else weights.dtype
    return unet(x.to(model_dtype), steps).sample.to(x.dtype)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_from: float, abar_to: float,
              clip: bool = False) -> torch.Tensor:
    """Move ``x`` from noise level ``abar_from`` to ``abar_to`` along the predicted noise ``eps``.

    With ``clip`` the predicted x0 is clamped to [-1, 1] and the noise re-derived from it first.
    """
    x0 = (x - (1 - abar_from) ** 0.5 * eps) / abar_from ** 0.5
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - abar_from ** 0.5 * x0) / (1 - abar_from) ** 0.5
    return abar_to ** 0.5 * x0 + (1 - abar_to) ** 0.5 * eps


def _abar(scheduler, timestep: int) -> float:
    return float(scheduler.alphas_cumprod[int(timestep)])


@torch.no_grad()
def dnf_noises(unet: nn.Module, scheduler, x0: torch.Tensor, num_steps: int) -> list[torch.Tensor]:
    """The K noises predicted along a deterministic inversion from x0 over :func:`dnf_levels`."""
    levels = dnf_levels(scheduler, num_steps)
    x, noises = x0.float(), []
    for index, (here, there) in enumerate(zip(levels[:-1], levels[1:])):
        eps = predict_noise(unet, x, here)
        noises.append(eps)
        if index < num_steps - 1:  # the last target (T) is never visited
            x = ddim_step(x, eps, _abar(scheduler, here), _abar(scheduler, there))
    return noises


@torch.no_grad()
def ddim_invert(unet: nn.Module, scheduler, x0: torch.Tensor, num_steps: int, clip: bool = True) -> torch.Tensor:
    """Deterministic inversion x0 -> x_T over :func:`dire_levels` (S UNet passes)."""
    levels = dire_levels(scheduler, num_steps)
    x = x0.float()
    for index, here in enumerate(levels):
        there = _abar(scheduler, levels[index + 1]) if index + 1 < len(levels) else 0.0
        x = ddim_step(x, predict_noise(unet, x, here), _abar(scheduler, here), there, clip)
    return x


@torch.no_grad()
def ddim_reconstruct(unet: nn.Module, scheduler, x_t: torch.Tensor, num_steps: int,
                     clip: bool = True) -> torch.Tensor:
    """Deterministic sampling x_T -> x0 over the same levels as :func:`ddim_invert` (S passes)."""
    levels = dire_levels(scheduler, num_steps)
    x = x_t.float()
    for index in range(len(levels) - 1, -1, -1):
        there = _abar(scheduler, levels[index - 1]) if index > 0 else 1.0
        x = ddim_step(x, predict_noise(unet, x, levels[index]), _abar(scheduler, levels[index]), there, clip)
    return x
