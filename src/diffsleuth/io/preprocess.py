"""The preprocessing a model was trained with, stored in its ``config.json``.

Like timm's ``pretrained_cfg``: size, crop/resize policy and normalisation travel with the weights,
so inference cannot drift from training. Everything here is numpy and Pillow (the base install
scores without torch); the torch tensor forms (:func:`to_tensor`, :func:`normalize`,
:func:`preprocess_batch`) live in :mod:`diffsleuth.io.preprocess_torch` and are re-exported here
on first use, so their old import path keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import importlib
from typing import Any

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PreprocessConfig:
    """How an image becomes a model input.

    ``policy``: ``resize`` (whole image to size x size), ``center_crop`` (pad if smaller, then crop
    the centre: no resampling, so pixel statistics survive), or ``resize_center_crop`` (shorter
    side to size, then centre crop). ``mean``/``std`` apply after scaling to [0, 1];
    mean 0.5/std 0.5 gives [-1, 1].
    """

    size: int = field(default=256, metadata={"range": (1, 8192)})
    policy: str = "resize"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5), metadata={"range": (0.0, 1.0)})
    std: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5), metadata={"range": (1e-6, 100.0)})
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in ("resize", "center_crop", "resize_center_crop"):
            raise ValueError(f"unknown preprocessing policy {self.policy!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        self.mean = tuple(self.mean)
        self.std = tuple(self.std)


def _padding(image: Image.Image, size: int) -> tuple[int, int, str]:
    """Rows and columns :func:`pad_to` adds, and the numpy pad mode it uses."""
    pad_h = max(0, size - image.height)
    pad_w = max(0, size - image.width)
    mode = "reflect" if pad_h < image.height and pad_w < image.width else "edge"
    return pad_h, pad_w, mode


def _pad(image: Image.Image, pad_h: int, pad_w: int, mode: str) -> Image.Image:
    if not pad_h and not pad_w:
        return image
    array = np.pad(np.asarray(image), ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                   mode=mode)
    return Image.fromarray(array)


def pad_to(image: Image.Image, size: int) -> Image.Image:
    """Pad symmetrically with reflection to at least size x size (no resampling).

    This pads the whole image: a 2 x 30,000,000 image would become 256 x 30,000,000. To take a
    window of the padded image, use :func:`padded_crop`, which pads only the window.
    """
    return _pad(image, *_padding(image, size))


def padded_crop(image: Image.Image, size: int, left: int, top: int) -> Image.Image:
    """The size x size window at (``left``, ``top``) of ``pad_to(image, size)``, padding only the window.

    Pixel for pixel what cropping the padded image gives: along an axis that needs padding the
    window spans the whole padded axis, and padding each axis commutes with cropping the other.
    """
    pad_h, pad_w, mode = _padding(image, size)
    x0, x1 = (0, image.width) if pad_w else (left, left + size)
    y0, y1 = (0, image.height) if pad_h else (top, top + size)
    return _pad(image.crop((x0, y0, x1, y1)), pad_h, pad_w, mode)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = max(image.width, size), max(image.height, size)
    return padded_crop(image, size, (width - size) // 2, (height - size) // 2)


def geometry(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Apply the size policy only (no normalisation): the region the model sees."""
    resample = _RESAMPLE[cfg.interpolation]
    if cfg.policy == "resize":
        if image.size == (cfg.size, cfg.size):
            return image
        return image.resize((cfg.size, cfg.size), resample, reducing_gap=None)
    if cfg.policy == "resize_center_crop":
        scale = cfg.size / min(image.size)
        if scale != 1:
            new = (max(cfg.size, round(image.width * scale)), max(cfg.size, round(image.height * scale)))
            image = image.resize(new, resample, reducing_gap=None)
    return center_crop(image, cfg.size)


def to_array(image: Image.Image) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW in [0, 1] (what :func:`to_tensor` holds, as numpy)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def normalize_array(batch: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(B, 3, H, W) float32 in [0, 1] -> normalised with ``cfg``'s mean/std, in float32 as
    :func:`normalize` computes it, so both runtimes feed the encoder the same numbers."""
    mean = np.asarray(cfg.mean, dtype=batch.dtype).reshape(-1, 3, 1, 1)
    std = np.asarray(cfg.std, dtype=batch.dtype).reshape(-1, 3, 1, 1)
    return (batch - mean) / std


def preprocess_array(images: list[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """Images -> normalised float32 batch (B, 3, size, size), numpy."""
    return normalize_array(np.stack([to_array(geometry(img, cfg)) for img in images]), cfg)


_TORCH_FORMS = ("to_tensor", "normalize", "preprocess_batch")


def __getattr__(name: str) -> Any:
    """The torch forms, imported on first use (they need torch; the rest of this module does not)."""
    if name in _TORCH_FORMS:
        return getattr(importlib.import_module("diffsleuth.io.preprocess_torch"), name)
    raise AttributeError(f"module 'diffsleuth.io.preprocess' has no attribute {name!r}")
