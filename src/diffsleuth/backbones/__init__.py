"""Pretrained backbones (Stable Diffusion, DDPM, CLIP, ResNet-50), by hub id or local folder."""

from diffsleuth.backbones.loading import (
    DDPM_BEDROOM_ID,
    SD15_ID,
    BackboneUnavailableError,
    StableDiffusionParts,
    load_clip,
    load_ddpm,
    load_resnet50,
    load_stable_diffusion,
)

__all__ = [
    "DDPM_BEDROOM_ID", "SD15_ID", "BackboneUnavailableError", "StableDiffusionParts", "load_clip",
    "load_ddpm", "load_resnet50", "load_stable_diffusion",
]
