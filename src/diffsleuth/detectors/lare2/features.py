"""LaRE: the Latent Reconstruction Error of Stable Diffusion (Luo et al., CVPR 2024).

An image is brought to a fixed frame (256x256 by default), encoded by the SD VAE, noised to step
``t`` with the SD training schedule, and denoised once by the UNet conditioned on a short prompt.
LaRE is the squared error between predicted and true noise, averaged over ``ensemble`` noise
draws: a 4 x 32 x 32 map for a 256 frame. Generated images are reconstructed more easily.

:func:`lare_map` is the pure computation (all randomness passed in). :class:`LareExtractor`
draws the randomness from a generator seeded by the image's pixels and the configured seed, so the
same image gives the same LaRE whatever batch it is in, whether it came from the cache or was
computed on the fly at scan time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from diffsleuth.backbones.loading import SD15_ID, StableDiffusionParts, load_stable_diffusion
from diffsleuth.settings import config_to_dict, ranged
from diffsleuth.features.extract import register_extractor
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.preprocess import PreprocessConfig, geometry, to_tensor

LATENT_MODES = ("sample", "mean")


@dataclass
class LareConfig:
    """Everything that determines a LaRE map (and therefore its cache key).

    ``policy`` brings an image to the ``size`` x ``size`` frame (``resize`` as the paper; or
    ``center_crop`` / ``resize_center_crop`` from :mod:`diffsleuth.io.preprocess`).
    ``class_prompt`` is used when a record has a class name (``{class}`` is replaced); set it to
    an empty string to always use ``prompt``. ``latent`` picks a posterior ``sample`` or its ``mean``.
    """

    backbone: str = SD15_ID
    size: int = ranged(256, 8, 4096)
    policy: str = "resize"
    interpolation: str = "bicubic"
    timestep: int = ranged(200, 0, 999)  # of the scheduler's 1000 training steps
    ensemble: int = ranged(4, 1, 64)
    prompt: str = "a photo"
    class_prompt: str = "a photo of a {class}"
    latent: str = "sample"
    seed: int = ranged(0, 0, 2**32 - 1)

    def __post_init__(self) -> None:
        if self.latent not in LATENT_MODES:
            raise ValueError(f"latent must be one of {LATENT_MODES}, not {self.latent!r}")
        if self.ensemble < 1:
            raise ValueError("ensemble must be at least 1 noise draw")
        if self.size % 8:
            raise ValueError(f"size {self.size} must be a multiple of 8 (the VAE downsampling)")
        self.frame_config()

    def frame_config(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.size, policy=self.policy, interpolation=self.interpolation)


def frame_tensor(images: Sequence[Image.Image], config: LareConfig) -> torch.Tensor:
    """Images -> the (B, 3, size, size) frame in [0, 1] that LaRE (and CLIP's crop) see."""
    cfg = config.frame_config()
    return torch.stack([to_tensor(geometry(img.convert("RGB"), cfg)) for img in images])


def lare_map(unet: nn.Module, scheduler, latents: torch.Tensor, noise: torch.Tensor,
             timestep: int, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """Mean over draws of the squared noise-prediction error, (B, C, h, w) float32.

    ``latents`` (B, C, h, w) are scaled VAE latents, ``noise`` (B, E, C, h, w) the E draws per
    image, ``encoder_hidden_states`` (B, L, D) or (1, L, D). The noisy latent follows the forward
    process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the scheduler's ``alphas_cumprod``.
    """
    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise ValueError("LaRE needs an epsilon-prediction scheduler, got "
                         f"{scheduler.config.prediction_type!r}")
    if noise.dim() != 5 or noise.shape[0] != latents.shape[0] or noise.shape[2:] != latents.shape[1:]:
        raise ValueError(f"noise {tuple(noise.shape)} does not fit latents {tuple(latents.shape)}")
    batch, draws = noise.shape[:2]
    abar = scheduler.alphas_cumprod[int(timestep)].double()
    x0 = latents.unsqueeze(1).expand_as(noise)
    x_t = (abar.sqrt().item() * x0 + (1 - abar).sqrt().item() * noise).flatten(0, 1)
    if encoder_hidden_states.shape[0] == 1:
        context = encoder_hidden_states.expand(batch * draws, -1, -1)
    elif encoder_hidden_states.shape[0] == batch:
        context = encoder_hidden_states.repeat_interleave(draws, dim=0)
    else:
        raise ValueError(f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} is neither 1 nor {batch}")
    steps = torch.full((batch * draws,), int(timestep), device=x_t.device, dtype=torch.long)
    predicted = unet(x_t, steps, encoder_hidden_states=context).sample
    error = (predicted.float() - noise.flatten(0, 1).float()) ** 2
    return error.view(batch, draws, *error.shape[1:]).mean(dim=1)


def image_seed(image: Image.Image, seed: int) -> int:
    """A 63-bit seed fixed by the decoded pixels and ``seed`` (file names and batches do not matter)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{seed}:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def record_prompt(config: LareConfig, record: ImageRecord | None) -> str:
    if record is not None and record.class_name and config.class_prompt:
        return config.class_prompt.replace("{class}", record.class_name.replace("_", " "))
    return config.prompt


class LareExtractor(nn.Module):
    """Frozen SD parts plus the LaRE recipe; a module so that ``.to(device)`` moves SD along."""

    def __init__(self, config: LareConfig, parts: StableDiffusionParts) -> None:
        super().__init__()
        self.config = config
        self.vae = parts.vae
        self.unet = parts.unet
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.scheduler = parts.scheduler
        self._prompts: dict[tuple[str, str, torch.dtype], torch.Tensor] = {}
        if not 0 <= config.timestep < len(self.scheduler.alphas_cumprod):
            raise ValueError(f"timestep {config.timestep} outside the schedule "
                             f"(0..{len(self.scheduler.alphas_cumprod) - 1})")

    @property
    def _device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def cache_config(self) -> dict:
        return {"feature": "lare", **config_to_dict(self.config), "dtype": str(self._dtype).removeprefix("torch.")}

    def frames(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return frame_tensor(images, self.config)

    def map_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of a LaRE map: latent channels and the frame over the VAE's downsampling."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = self.config.size // factor
        return (self.vae.config.latent_channels, side, side)

    @torch.no_grad()
    def prompt_embedding(self, prompt: str) -> torch.Tensor:
        """(1, L, D) text embedding, computed once per prompt, device and dtype."""
        key = (prompt, str(self._device), self._dtype)
        if key not in self._prompts:
            ids = self.tokenizer(prompt, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            self._prompts[key] = self.text_encoder(ids.to(self._device))[0].to(self._dtype)
        return self._prompts[key]

    @torch.no_grad()
    def compute(self, frames: torch.Tensor, seeds: Sequence[int], prompts: Sequence[str]) -> torch.Tensor:
        """LaRE (B, C, h, w) float32 on the CPU for frames in [0, 1] with per-image seeds and prompts."""
        device, dtype = self._device, self._dtype
        pixels = (frames * 2 - 1).to(device, dtype)
        posterior = self.vae.encode(pixels).latent_dist
        shape = posterior.mean.shape[1:]
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        eps_latent = torch.stack([torch.randn(shape, generator=g) for g in generators])
        noise = torch.stack([torch.randn((self.config.ensemble, *shape), generator=g) for g in generators])
        latents = posterior.mean
        if self.config.latent == "sample":
            latents = latents + posterior.std * eps_latent.to(device, dtype)
        latents = latents * self.vae.config.scaling_factor
        context = torch.cat([self.prompt_embedding(p) for p in prompts])
        error = lare_map(self.unet, self.scheduler, latents, noise.to(device, dtype),
                         self.config.timestep, context)
        return error.cpu()

    def lare_for_images(self, images: Sequence[Image.Image],
                        records: Sequence[ImageRecord | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames in [0, 1], LaRE maps) for decoded images; prompts follow the records' classes."""
        records = list(records) if records is not None else [None] * len(images)
        frames = self.frames(images)
        seeds = [image_seed(img, self.config.seed) for img in images]
        prompts = [record_prompt(self.config, r) for r in records]
        return frames, self.compute(frames, seeds, prompts)

    def extract(self, images: list[Image.Image], records: list[ImageRecord]) -> dict[str, torch.Tensor]:
        return {"lare": self.lare_for_images(images, records)[1]}


def load_lare_extractor(config: LareConfig, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> LareExtractor:
    """Load SD from ``config.backbone`` (hub id or folder) and wrap it; fp16 only makes sense on GPU."""
    parts = load_stable_diffusion(config.backbone, device=device, dtype=dtype)
    return LareExtractor(config, parts)


@register_extractor("lare", LareConfig)
def build(config: LareConfig, device: torch.device, dtype: torch.dtype) -> LareExtractor:
    return load_lare_extractor(config, device, dtype)
