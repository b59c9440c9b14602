"""DNF and DIRE detectors: a ResNet trained from scratch on a diffusion-noise feature map.

The DDPM UNet is an external, frozen module loaded from ``feature.backbone`` (hub id or folder);
only the classifier is saved. ``score_images`` computes the feature on the fly, so a trained
folder scans raw images like any other detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torchvision
from PIL import Image
from torch import nn

from diffsleuth.backbones.loading import load_ddpm
from diffsleuth.detectors.base import Detector, DetectorConfig
from diffsleuth.detectors.registry import register_detector
from diffsleuth.devices import resolve_device
from diffsleuth.detectors.dnf.dire import DireConfig, dire_map
from diffsleuth.detectors.dnf.features import dnf_map
from diffsleuth.detectors.dnf.noise import NoiseFeatureConfig, NoiseFeatureExtractor

ARCHES = ("resnet50", "resnet18")


@dataclass
class DnfConfig(DetectorConfig):
    """``arch`` resnet50 is the paper's; resnet18 exists for quick CPU experiments and tests."""

    feature: NoiseFeatureConfig = field(default_factory=NoiseFeatureConfig)
    arch: str = "resnet50"

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"arch must be one of {ARCHES}, not {self.arch!r}")
        self.preprocess.size = self.feature.size


@dataclass
class DireDetectorConfig(DnfConfig):
    feature: DireConfig = field(default_factory=DireConfig)


def build_classifier(arch: str) -> nn.Module:
    """torchvision ResNet from scratch with a single "generated" logit.

    The head's weight starts from N(0, 0.02), as the official DNF (and CNNDetection) trainer
    initialises it; the rest keeps torchvision's initialisation.
    """
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Linear(net.fc.in_features, 1)
    nn.init.normal_(net.fc.weight, 0.0, 0.02)
    return net


class NoiseFeatureDetector(Detector):
    feature_name: ClassVar[str] = "dnf"
    external_modules = ("extractor",)

    def __init__(self, config: DnfConfig, extractor: NoiseFeatureExtractor | None = None) -> None:
        super().__init__(config)
        self.classifier = build_classifier(config.arch)
        self.extractor = extractor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features).squeeze(1)

    @torch.no_grad()
    def score_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[dict]]:
        if self.extractor is None:
            raise RuntimeError(f"{self.name}: no diffusion backbone loaded (build it with from_config)")
        features = self.extractor.compute(images)
        parameter = next(self.classifier.parameters())
        logits = self(features.to(parameter.device, parameter.dtype)).float()
        return torch.sigmoid(logits).cpu(), [{} for _ in images]

    @classmethod
    def feature_function(cls):
        return dnf_map

    @classmethod
    def from_config(cls, config: DnfConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, pretrained: bool = True) -> NoiseFeatureDetector:
        """The DDPM backbone always loads (it is never saved); the classifier starts from scratch."""
        device = resolve_device(device)
        unet, scheduler = load_ddpm(config.feature.backbone, device=device, dtype=dtype or torch.float32)
        extractor = NoiseFeatureExtractor(cls.feature_name, config.feature, unet, scheduler, cls.feature_function())
        return cls(config, extractor).to(device, dtype=dtype)


@register_detector
class DnfDetector(NoiseFeatureDetector):
    name = "dnf"
    config_class = DnfConfig
    feature_name = "dnf"


@register_detector
class DireDetector(NoiseFeatureDetector):
    name = "dire"
    config_class = DireDetectorConfig
    feature_name = "dire"

    @classmethod
    def feature_function(cls):
        return dire_map
