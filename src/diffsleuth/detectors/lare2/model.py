"""LaRE² (Luo et al., CVPR 2024): CLIP features refined by the Latent Reconstruction Error.

A fully fine-tuned CLIP RN50 image encoder gives the layer-3 map and the attention-pooled
embedding x_g. LaRE (see :mod:`diffsleuth.detectors.lare2.features`), pooled to the map's grid, guides two
refinements (EGRE): a spatial one, where it biases the attention of a global token over the map
positions (x_s), and a channel one, where its spatial mean gates the map's channels (x_c). A linear
head on concat(x_g, x_s, x_c) gives real/generated logits.

Unlike the official code, CLIP and LaRE see the same pixels: the image is brought to the LaRE frame
(256x256), CLIP takes a 224 crop of that frame at an offset on the 8-pixel latent grid, and LaRE
is cropped to the matching latent cells (see docs/lare2.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffsleuth.backbones.loading import load_clip
from diffsleuth.detectors.base import Detector, DetectorConfig
from diffsleuth.detectors.registry import register_detector
from diffsleuth.settings import ranged
from diffsleuth.devices import resolve_device
from diffsleuth.detectors.lare2.features import LareConfig, LareExtractor, load_lare_extractor
from diffsleuth.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig, normalize

CLIP_STRIDE = 32


def _default_preprocess() -> PreprocessConfig:
    return PreprocessConfig(size=224, policy="center_crop", mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass
class Lare2Config(DetectorConfig):
    """``preprocess.size`` is CLIP's crop of the LaRE frame (``lare.size``), normalised with
    ``preprocess.mean/std`` (ImageNet, as the official code); centre crop at inference.
    ``clip_model`` is an open_clip name or a local folder, ``clip_pretrained`` its weight tag.
    """

    preprocess: PreprocessConfig = field(default_factory=_default_preprocess)
    lare: LareConfig = field(default_factory=LareConfig)
    clip_model: str = "RN50"
    clip_pretrained: str | None = "openai"
    heads: int = ranged(8, 1, 64)
    head_dim: int = ranged(64, 1, 1024)
    channel_hidden: int = ranged(128, 1, 8192)
    dropout: float = ranged(0.1, 0.0, 0.95)

    def __post_init__(self) -> None:
        crop, frame = self.preprocess.size, self.lare.size
        if crop > frame:
            raise ValueError(f"CLIP crop {crop} is larger than the LaRE frame {frame}")
        if crop % CLIP_STRIDE:
            raise ValueError(f"CLIP crop {crop} must be a multiple of {CLIP_STRIDE} (the RN50 stride)")


def crop_aligned(frames: torch.Tensor, lare: torch.Tensor, top: int, left: int,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop pixels (..., S, S) and the LaRE map (..., S/f, S/f) to the same region.

    ``top``/``left``/``size`` are in pixels and must lie on the latent grid (multiples of f = 8 for SD).
    """
    factor = frames.shape[-1] // lare.shape[-1]
    if frames.shape[-1] != factor * lare.shape[-1] or frames.shape[-2] != factor * lare.shape[-2]:
        raise ValueError(f"frame {tuple(frames.shape[-2:])} is not a multiple of LaRE {tuple(lare.shape[-2:])}")
    if top % factor or left % factor or size % factor:
        raise ValueError(f"crop ({top}, {left}, {size}) is not on the {factor}-pixel latent grid")
    t, l, s = top // factor, left // factor, size // factor
    return (frames[..., top:top + size, left:left + size], lare[..., t:t + s, l:l + s])


def centre_offset(frame: int, size: int, factor: int = 8) -> int:
    """The centre crop offset, rounded down to the latent grid."""
    return (frame - size) // 2 // factor * factor


def relative_lare_map(lare: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) LaRE -> (B, h, w) in [0, 1]: the channel-mean reconstruction error of each
    latent cell (8x8 pixels of the classifier's crop) over the largest cell of that image.

    This is LaRE²'s ``score_map``. It is *not* P(generated): it shows where Stable Diffusion
    reconstructs the image worst (1) and best (near 0); generated content tends to reconstruct
    well, so low regions are the suspicious ones. Absolute levels are in the ``lare_mean`` extra.
    """
    cells = lare.mean(dim=1)
    return cells / cells.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]


class SpatialRefinement(nn.Module):
    """Error-guided spatial refinement: the global token attends over the map positions,
    with one LaRE-derived bias per head added to the attention logits."""

    def __init__(self, channels: int, grid: int, lare_channels: int, heads: int, head_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, channels) / channels ** 0.5)
        self.lare_bias = nn.Conv2d(lare_channels, heads, kernel_size=1)
        self.q = nn.Linear(channels, heads * head_dim)
        self.k = nn.Linear(channels, heads * head_dim)
        self.v = nn.Linear(channels, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, channels)
        self.attention_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(channels)
        for linear in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, fmap: torch.Tensor, lare: torch.Tensor) -> torch.Tensor:
        batch = fmap.shape[0]
        tokens = fmap.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        bias = self.lare_bias(lare).flatten(2)
        bias = torch.cat([bias.mean(dim=2, keepdim=True), bias], dim=2)
        query = tokens[:, :1]
        q = self.q(query).view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(tokens).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(tokens).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias.unsqueeze(2)
        weights = self.attention_dropout(logits.softmax(dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(batch, 1, self.heads * self.head_dim)
        return self.norm(query + self.dropout(self.out(attended))).squeeze(1)


class ChannelRefinement(nn.Module):
    """Error-guided channel refinement: the spatial mean of LaRE gates the pooled map's channels."""

    def __init__(self, lare_channels: int, hidden: int, channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(lare_channels, hidden, bias=False), nn.ReLU(),
            nn.Linear(hidden, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, fmap: torch.Tensor, lare: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3)) * self.gate(lare.mean(dim=(2, 3)))


class Lare2Network(nn.Module):
    """CLIP ModifiedResNet + EGRE + linear head; ``forward(pixels, lare) -> (B, 2)`` logits."""

    def __init__(self, visual: nn.Module, config: Lare2Config, lare_channels: int = 4) -> None:
        super().__init__()
        if not all(hasattr(visual, name) for name in ("stem", "layer3", "layer4", "attnpool")):
            raise ValueError(f"LaRE² needs a CLIP ModifiedResNet (RN50 family), got {type(visual).__name__}")
        self.visual = visual
        channels = visual.layer4[0].conv1.in_channels
        embed = visual.attnpool.c_proj.out_features
        grid = config.preprocess.size // 16
        self.spatial = SpatialRefinement(channels, grid, lare_channels, config.heads, config.head_dim,
                                         config.dropout)
        self.channel = ChannelRefinement(lare_channels, config.channel_hidden, channels)
        self.head = nn.Linear(embed + 2 * channels, 2)

    def features(self, pixels: torch.Tensor, lare: torch.Tensor) -> dict[str, torch.Tensor]:
        """x_g, x_s, x_c for pixels and the LaRE map of the same region."""
        v = self.visual
        fmap = v.layer3(v.layer2(v.layer1(v.stem(pixels))))
        x_g = v.attnpool(v.layer4(fmap))
        aligned = F.adaptive_avg_pool2d(lare.to(fmap.dtype), fmap.shape[-2:])
        return {"x_g": x_g, "x_s": self.spatial(fmap, aligned), "x_c": self.channel(fmap, aligned)}

    def forward(self, pixels: torch.Tensor, lare: torch.Tensor) -> torch.Tensor:
        f = self.features(pixels, lare)
        return self.head(torch.cat([f["x_g"], f["x_s"], f["x_c"]], dim=1))


@register_detector
class Lare2Detector(Detector):
    """Scores images end to end: LaRE on the fly from SD, then the EGRE classifier."""

    name = "lare2"
    config_class = Lare2Config
    external_modules = ("lare_backbone",)
    extra_columns = ("lare_mean",)
    score_map_label = "LaRE / image max (low: reconstructs well)"

    def __init__(self, config: Lare2Config, visual: nn.Module, lare_backbone: LareExtractor) -> None:
        super().__init__(config)
        self.network = Lare2Network(visual, config)
        self.lare_backbone = lare_backbone

    def forward(self, pixels: torch.Tensor, lare: torch.Tensor) -> torch.Tensor:
        """One logit of "generated" per image: sigmoid of it is the softmax probability."""
        logits = self.network(pixels, lare)
        return logits[:, 1] - logits[:, 0]

    def crop_inputs(self, frames: torch.Tensor, lare: torch.Tensor, top: int | None = None,
                    left: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned CLIP crop (normalised) and LaRE crop; centre crop unless offsets are given."""
        size = self.config.preprocess.size
        factor = frames.shape[-1] // lare.shape[-1]
        centre = centre_offset(frames.shape[-1], size, factor)
        pixels, cropped = crop_aligned(frames, lare, centre if top is None else top,
                                       centre if left is None else left, size)
        return normalize(pixels, self.config.preprocess), cropped

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[dict]]:
        frames, lare = self.lare_backbone.lare_for_images(images)
        pixels, lare = self.crop_inputs(frames, lare)
        logits = self(pixels.to(self.device, self.dtype), lare.to(self.device, self.dtype))
        probs = torch.sigmoid(logits.float()).cpu()
        maps = relative_lare_map(lare.float().cpu())
        return probs, [{"lare_mean": round(float(m), 6), "score_map": cells.numpy()}
                       for m, cells in zip(lare.float().mean(dim=(1, 2, 3)), maps)]

    @classmethod
    def from_config(cls, config: Lare2Config, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, pretrained: bool = True) -> Lare2Detector:
        """CLIP (pretrained, or architecture only when restoring a fine-tuned one) and SD for LaRE."""
        device = resolve_device(device)
        visual = load_clip(config.clip_model, config.clip_pretrained, load_weights=pretrained).visual
        lare_backbone = load_lare_extractor(config.lare, device, dtype or torch.float32)
        model = cls(config, visual, lare_backbone)
        return model.to(device, dtype=dtype)
