"""Deterministic DDIM steps (eta = 0) over an evenly spaced subset of the training timesteps.

Shared by DNF (noise predicted along the inversion trajectory) and DIRE (inversion followed by
reconstruction). With S steps the trajectory visits the levels ``round(linspace(0, T-1, S+1))``:
inversion walks up from level 0 (the clean image), reconstruction walks back down.
"""

from __future__ import annotations

import torch
from torch import nn


def timestep_levels(scheduler, num_steps: int) -> list[int]:
    """S+1 evenly spaced training timesteps from 0 to T-1."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    total = len(scheduler.alphas_cumprod)
    return torch.linspace(0, total - 1, num_steps + 1).round().long().tolist()


def predict_noise(unet: nn.Module, x: torch.Tensor, timestep: int) -> torch.Tensor:
    steps = torch.full((x.shape[0],), int(timestep), device=x.device, dtype=torch.long)
    return unet(x, steps).sample


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_from: float, abar_to: float) -> torch.Tensor:
    """Move ``x`` from noise level ``abar_from`` to ``abar_to`` along the predicted noise ``eps``."""
    x0 = (x - (1 - abar_from) ** 0.5 * eps) / abar_from ** 0.5
    return abar_to ** 0.5 * x0 + (1 - abar_to) ** 0.5 * eps


def _abar(scheduler, timestep: int) -> float:
    return float(scheduler.alphas_cumprod[int(timestep)])


@torch.no_grad()
def ddim_invert(unet: nn.Module, scheduler, x0: torch.Tensor,
                num_steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Deterministic inversion x0 -> x_T; returns x_T and the noise predicted at each level."""
    levels = timestep_levels(scheduler, num_steps)
    x, noises = x0, []
    for here, there in zip(levels[:-1], levels[1:]):
        eps = predict_noise(unet, x, here)
        noises.append(eps)
        x = ddim_step(x, eps, _abar(scheduler, here), _abar(scheduler, there))
    return x, noises


@torch.no_grad()
def ddim_reconstruct(unet: nn.Module, scheduler, x_t: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Deterministic sampling x_T -> x0 over the same levels as :func:`ddim_invert`."""
    levels = timestep_levels(scheduler, num_steps)
    x = x_t
    for here, there in zip(levels[:0:-1], levels[-2::-1]):
        eps = predict_noise(unet, x, here)
        x = ddim_step(x, eps, _abar(scheduler, here), _abar(scheduler, there))
    return x
