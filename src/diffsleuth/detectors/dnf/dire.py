"""DIRE, the DIffusion Reconstruction Error (Wang et al., ICCV 2023), on the DNF backbone.

The image is inverted to x_T with S deterministic DDIM steps and reconstructed with S more, over
the official levels (0, 50, ..., 950 for S = 20) with the predicted x0 clipped to [-1, 1] at every
step (:mod:`diffsleuth.detectors.dnf.ddim`); DIRE is the absolute pixel difference. It costs 2S UNet
passes per image where DNF costs one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffsleuth.detectors.dnf.ddim import ddim_invert, ddim_reconstruct
from diffsleuth.features.extract import register_extractor
from diffsleuth.settings import ranged
from diffsleuth.detectors.dnf.noise import NoiseFeatureConfig, NoiseFeatureExtractor, load_noise_extractor


@dataclass
class DireConfig(NoiseFeatureConfig):
    num_steps: int = ranged(20, 1, 1000)


@torch.no_grad()
def dire_map(unet: nn.Module, scheduler, images: torch.Tensor, num_steps: int = 20) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] -> |x0 - reconstruct(invert(x0))|, float (B, 3, H, W)."""
    x_t = ddim_invert(unet, scheduler, images, num_steps)
    return (images.float() - ddim_reconstruct(unet, scheduler, x_t, num_steps)).abs()


@register_extractor("dire", DireConfig)
def build(config: DireConfig, device: torch.device, dtype: torch.dtype) -> NoiseFeatureExtractor:
    return load_noise_extractor("dire", config, dire_map, device, dtype)
