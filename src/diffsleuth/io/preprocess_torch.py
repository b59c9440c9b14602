"""The torch forms of :mod:`diffsleuth.io.preprocess`: image -> tensor, normalisation, a batch.

Split out so the base install (no torch) reads its preprocessing from ``preprocess`` alone; the
torch detectors and training recipes import these (``from diffsleuth.io.preprocess import
normalize`` still works: that module re-exports them on first use).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from diffsleuth.io.preprocess import PreprocessConfig, geometry


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 HWC RGB -> float CHW in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def normalize(batch: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean, dtype=batch.dtype, device=batch.device).view(-1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=batch.dtype, device=batch.device).view(-1, 3, 1, 1)
    return (batch - mean) / std


def preprocess_batch(images: list[Image.Image], cfg: PreprocessConfig) -> torch.Tensor:
    """Images -> normalised float32 batch (B, 3, size, size) on the CPU."""
    batch = torch.stack([to_tensor(geometry(img, cfg)) for img in images])
    return normalize(batch, cfg)
