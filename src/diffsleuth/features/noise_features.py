"""What DNF and DIRE share: the pixel-space DDPM backbone, the 256 frame, caching and legacy mode."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffsleuth.backbones.loading import DDPM_BEDROOM_ID, load_ddpm
from diffsleuth.settings import config_to_dict
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.preprocess import PreprocessConfig, preprocess_batch

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
LEGACY_JPEG_QUALITY = 75
"""Pillow's default JPEG quality, which the official code's image saving used."""


@dataclass
class NoiseFeatureConfig:
    """``legacy`` reproduces the official DNF storage (clamp to [0, 1], 8-bit, JPEG for JPEG
    sources): biased, it drops negative noise and leaks the source format. Off by default."""

    backbone: str = DDPM_BEDROOM_ID
    size: int = 256
    num_steps: int = 1
    legacy: bool = False

    def frame(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.size, policy="resize", interpolation="bicubic")


def legacy_quantise(feature: torch.Tensor, jpeg_quality: int | None = None) -> torch.Tensor:
    """The official code's storage: clamp to [0, 1], 8 bits, optionally a JPEG round trip."""
    quantised = (feature.clamp(0, 1) * 255).round().to(torch.uint8)
    if jpeg_quality is None:
        return quantised.float() / 255
    out = []
    for item in quantised:
        buffer = io.BytesIO()
        Image.fromarray(item.permute(1, 2, 0).cpu().numpy()).save(buffer, format="JPEG", quality=jpeg_quality)
        buffer.seek(0)
        array = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy())
        out.append(array.permute(2, 0, 1).float() / 255)
    return torch.stack(out).to(feature.device)


class NoiseFeatureExtractor(nn.Module):
    """A frozen DDPM UNet plus one feature function (``dnf_map`` or ``dire_map``)."""

    def __init__(self, name: str, config: NoiseFeatureConfig, unet: nn.Module, scheduler,
                 feature: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.name, self.config, self.unet, self.scheduler, self.feature = name, config, unet, scheduler, feature

    def cache_config(self) -> dict:
        dtype = str(next(self.unet.parameters()).dtype).removeprefix("torch.")
        return {"feature": self.name, **config_to_dict(self.config), "dtype": dtype}

    @torch.no_grad()
    def compute(self, images: Sequence[Image.Image], jpeg_sources: Sequence[bool] | None = None) -> torch.Tensor:
        """(B, 3, size, size) float32 features on the CPU."""
        parameter = next(self.unet.parameters())
        pixels = preprocess_batch(list(images), self.config.frame()).to(parameter.device, parameter.dtype)
        feature = self.feature(self.unet, self.scheduler, pixels, num_steps=self.config.num_steps).float()
        if self.config.legacy:
            sources = jpeg_sources or [False] * len(images)
            feature = torch.cat([legacy_quantise(f[None], LEGACY_JPEG_QUALITY if jpg else None)
                                 for f, jpg in zip(feature, sources)])
        return feature.cpu()

    def extract(self, images: list[Image.Image], records: list[ImageRecord]) -> dict[str, torch.Tensor]:
        jpeg_sources = [r.path.suffix.lower() in JPEG_SUFFIXES for r in records]
        return {self.name: self.compute(images, jpeg_sources).half()}


def load_noise_extractor(name: str, config: NoiseFeatureConfig, feature: Callable[..., torch.Tensor],
                         device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> NoiseFeatureExtractor:
    unet, scheduler = load_ddpm(config.backbone, device=device, dtype=dtype)
    return NoiseFeatureExtractor(name, config, unet, scheduler, feature)
