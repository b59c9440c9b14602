"""DNF, the Diffusion Noise Feature (Zhang & Xu, arXiv 2312.02625).

With one step (the official released code) DNF is the noise a pixel-space DDPM predicts for the
clean image at t = 0: one forward pass. With K steps (the paper's first description) it is the
mean of the noises predicted along a deterministic K-step DDIM inversion over the official levels
``round(linspace(0, 1000, K+1))``.
"""

from __future__ import annotations

import torch
from torch import nn

from diffsleuth.detectors.dnf.ddim import dnf_noises
from diffsleuth.features.extract import register_extractor
from diffsleuth.detectors.dnf.noise import NoiseFeatureConfig, NoiseFeatureExtractor, load_noise_extractor


@torch.no_grad()
def dnf_map(unet: nn.Module, scheduler, images: torch.Tensor, num_steps: int = 1,
            return_stack: bool = False) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] -> DNF (B, 3, H, W), or (B, K, 3, H, W) with ``return_stack``."""
    noises = dnf_noises(unet, scheduler, images, num_steps)
    stack = torch.stack(noises, dim=1).float()
    return stack if return_stack else stack.mean(dim=1)


@register_extractor("dnf", NoiseFeatureConfig)
def build(config: NoiseFeatureConfig, device: torch.device, dtype: torch.dtype) -> NoiseFeatureExtractor:
    return load_noise_extractor("dnf", config, dnf_map, device, dtype)
