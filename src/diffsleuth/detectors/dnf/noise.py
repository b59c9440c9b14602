"""What DNF and DIRE share: the pixel-space DDPM backbone, the 256 frame, caching and legacy mode.

The frame follows the official DNF code: the decoded 8-bit image becomes a float tensor (0..255)
that torchvision resizes (bicubic, antialiased, no rounding or clamping of the result) before the
mapping to [-1, 1]. Resizing the 8-bit image with PIL instead rounds and clips every pixel, which
changed the feature by up to 11 % on non-256 inputs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2.functional import InterpolationMode, resize

from diffsleuth.backbones.loading import DDPM_BEDROOM_ID, load_ddpm
from diffsleuth.settings import config_to_dict, ranged
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.preprocess import PreprocessConfig

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
LEGACY_JPEG_QUALITY = 75
"""Pillow's default JPEG quality, which the official code's image saving used."""
FEATURE_REVISION = 2
"""Part of the cache key: bumped whenever the computation changes for the same settings
(2: torchvision float resize and the official DDIM levels / x0 clipping), so stale entries of an
older version are never reused."""
HALF_PRECISION_REVISION = 3
"""The same for fp16/bf16 entries: 3 when the DDIM trajectory moved to float32 (fp32 unchanged)."""


@dataclass
class NoiseFeatureConfig:
    """``legacy`` reproduces the official DNF storage (clamp to [0, 1], 8-bit, JPEG for JPEG
    sources): biased, it drops negative noise and leaks the source format. Off by default."""

    backbone: str = DDPM_BEDROOM_ID
    size: int = ranged(256, 8, 4096)
    num_steps: int = ranged(1, 1, 1000)
    legacy: bool = False

    def frame(self) -> PreprocessConfig:
        """The detector's preprocessing record (the resize itself is :func:`frame_batch`)."""
        return PreprocessConfig(size=self.size, policy="resize", interpolation="bicubic")


def frame_batch(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Images -> (B, 3, size, size) float32 in [-1, 1], resized as the official DNF code does."""
    frames = []
    for image in images:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float()
        if pixels.shape[-2:] != (size, size):
            pixels = resize(pixels, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        frames.append(pixels)
    return torch.stack(frames) / 255.0 * 2.0 - 1.0


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
        # half precision changed at revision 3 (the DDIM trajectory moved to float32); float32 did not,
        # so its entries keep revision 2 and stay valid
        revision = FEATURE_REVISION if dtype == "float32" else HALF_PRECISION_REVISION
        return {"feature": self.name, **config_to_dict(self.config), "dtype": dtype, "revision": revision}

    @torch.no_grad()
    def compute(self, images: Sequence[Image.Image], jpeg_sources: Sequence[bool] | None = None) -> torch.Tensor:
        """(B, 3, size, size) float32 features on the CPU."""
        # float32 frame in any precision: the DDIM code casts only the UNet's input (see ddim.py)
        pixels = frame_batch(images, self.config.size).to(next(self.unet.parameters()).device)
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
