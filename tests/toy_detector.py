"""A minimal detector for foundation tests: a 1x1 conv + pooling on the normalised image."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from diffsleuth.detectors.base import Detector, DetectorConfig
from diffsleuth.detectors.registry import register_detector
from diffsleuth.io.preprocess import PreprocessConfig


@dataclass
class ToyConfig(DetectorConfig):
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(size=32))
    hidden: int = 4


@register_detector
class ToyDetector(Detector):
    name = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.conv = nn.Conv2d(3, config.hidden, 3, padding=1)
        self.head = nn.Linear(config.hidden, 1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(batch)).mean(dim=(2, 3))).squeeze(1)


def saved_toy(folder, seed: int = 0):
    torch.manual_seed(seed)
    return ToyDetector(ToyConfig()).save_pretrained(folder)


@register_detector
class ToyMapDetector(ToyDetector):
    """The toy detector plus a 3x4 score map per image (region scores of the same head)."""

    name = "toy-map"

    @torch.inference_mode()
    def score_images(self, images):
        batch = self.preprocess(images).to(self.device, self.dtype)
        features = torch.relu(self.conv(batch))
        regions = nn.functional.adaptive_avg_pool2d(features, (3, 4))  # N x hidden x 3 x 4
        maps = torch.sigmoid(self.head(regions.permute(0, 2, 3, 1)).squeeze(-1)).float().cpu()
        probs = torch.sigmoid(self(batch).float().reshape(-1)).cpu()
        return probs, [{"score_map": m.numpy()} for m in maps]


def saved_toy_map(folder, seed: int = 0):
    torch.manual_seed(seed)
    return ToyMapDetector(ToyConfig()).save_pretrained(folder)
