"""Natural-trace judge: real images define the class, generated ones are whatever is not near it.

Our interpretation of "Let Real Images be as a Judger" (arXiv 2403.16513, no public code): an
encoder and projection head map an image to a unit embedding ``z``; ``K`` learnable unit vectors,
the *natural traces*, are trained jointly so that real images sit near one of them and generated
images sit far from all of them. The score is ``s(z) = max_k cos(z, t_k)`` and a logistic
calibration fitted on the validation split turns it into P(generated).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffsleuth.detectors.base import Detector, DetectorConfig
from diffsleuth.detectors.registry import register_detector
from diffsleuth.settings import ranged
from diffsleuth.devices import resolve_device
from diffsleuth.detectors.image_grid import POLICIES, cover_views, fixed_views, limit_scale
from diffsleuth.detectors.judge.domain import DomainConfig, nearest_distance, outside_reason
from diffsleuth.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig, geometry, normalize, to_tensor

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


class FixedFrontEnd(nn.Module):
    """A parameter-free residual that removes image content and keeps local pixel correlations."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "npr":
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
            x = x[..., :h, :w]
            coarse = F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
            return (x - coarse) * 4.0
        if self.kind == "highpass":
            return (x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)) * 4.0
        return x


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class CompactCNN(nn.Module):
    """A small ResNet: a full-resolution stem sees every pixel, then four stride-2 stages."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        widths = (width, width * 2, width * 4, width * 8)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        stages, cin = [], width
        for cout in widths:
            stages.append(ResidualBlock(cin, cout, 2))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class ClipImageEncoder(nn.Module):
    """The frozen open_clip image tower; its weights come from ``backbone``, never from our file."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual.eval().requires_grad_(False)
        self.out_dim = int(visual.output_dim)

    def train(self, mode: bool = True) -> ClipImageEncoder:
        super().train(mode)
        self.visual.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.visual(x).float()


def build_encoder(config: JudgeConfig, pretrained: bool = True) -> nn.Module:
    """The configured encoder; ``pretrained=False`` skips ResNet weights a saved file replaces.
    The CLIP tower and the ONNX encoder are frozen and never saved, so they always load."""
    from diffsleuth.backbones.loading import load_clip, load_resnet50

    if config.encoder == "cnn":
        return CompactCNN(config.width)
    if config.encoder == "clip-vit-b16":
        from diffsleuth.backbones.clip_torch import load_clip_tower

        return load_clip_tower(config.backbone, config.backbone_sha256).requires_grad_(False)
    if config.encoder == "onnx":
        from diffsleuth.backbones.onnx_encoder import load_onnx_encoder

        return load_onnx_encoder(config.backbone, config.backbone_sha256)
    if config.encoder == "resnet50":
        net = load_resnet50(config.backbone if pretrained else None, num_classes=1)
        net.fc = nn.Identity()
        net.out_dim = 2048
        return net
    clip = load_clip(config.backbone or "RN50", config.backbone_pretrained)
    return ClipImageEncoder(clip.visual)


def trace_similarity(z: torch.Tensor, traces: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit embeddings (B, d) to each trace (K, d) -> (B, K)."""
    return z @ F.normalize(traces, dim=1).T


def judge_loss(z: torch.Tensor, labels: torch.Tensor, traces: torch.Tensor,
               temperature: float = 0.07, trace_temperature: float = 0.1,
               trace_weight: float = 1.0, fake_margin: float = 0.0,
               pull_fakes: bool = False) -> dict[str, torch.Tensor]:
    """Extended SupCon over batch + traces, plus trace prediction; returns the parts and ``loss``.

    The traces join the batch as samples labelled real. Real anchors (and traces) take every other
    real sample and trace as positives; generated samples only appear in the denominators, unless
    ``pull_fakes`` also makes them each other's positives. Trace prediction: a real embedding is
    classified to its nearest trace (cross-entropy to the detached argmax); a generated one is
    penalised by how far its highest trace similarity exceeds ``fake_margin``.
    """
    labels = labels.reshape(-1).long()
    units = F.normalize(traces, dim=1)
    feats = torch.cat([z, units])
    lab = torch.cat([labels, labels.new_zeros(units.shape[0])])
    n = feats.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=feats.device)
    real = lab == 0
    positives = real[:, None] & real[None, :] & ~self_mask
    if pull_fakes:
        positives |= (~real[:, None]) & (~real[None, :]) & ~self_mask
    logits = (feats @ feats.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)
    counts = positives.sum(1)
    anchors = counts > 0
    supcon = -(log_prob * positives).sum(1)[anchors] / counts[anchors]
    supcon = supcon.mean() if anchors.any() else feats.sum() * 0.0

    sims = trace_similarity(z, traces)
    is_real = labels == 0
    zero = z.sum() * 0.0
    if is_real.any():
        real_sims = sims[is_real]
        trace_ce = F.cross_entropy(real_sims / trace_temperature, real_sims.argmax(1).detach())
    else:
        trace_ce = zero
    fake_push = F.relu(sims[~is_real].max(1).values - fake_margin).mean() if (~is_real).any() else zero
    loss = supcon + trace_weight * (trace_ce + fake_push)
    return {"loss": loss, "supcon": supcon, "trace_ce": trace_ce, "fake_push": fake_push}


CROP_BATCH = 64  # crops per encoder call


@register_detector
class JudgeDetector(Detector):
    """Encoder -> projection -> unit embedding; P(generated) from the nearest natural trace."""

    name = "judge"
    config_class = JudgeConfig
    extra_columns = ("trace_similarity",)

    def __init__(self, config: JudgeConfig, encoder: nn.Module | None = None) -> None:
        super().__init__(config)
        self.external_modules = ("encoder",) if config.encoder in FROZEN_ENCODERS else ()
        self.front_end = FixedFrontEnd(config.front_end)
        self.encoder = encoder if encoder is not None else build_encoder(config)
        dim = self.encoder.out_dim
        self.projection = nn.Sequential(nn.Linear(dim, config.proj_hidden), nn.ReLU(),
                                        nn.Linear(config.proj_hidden, config.embed_dim))
        generator = torch.Generator().manual_seed(0)
        self.traces = nn.Parameter(F.normalize(
            torch.randn(config.num_traces, config.embed_dim, generator=generator), dim=1))
        centroids = config.domain.centroids if config.domain is not None else 0
        outside = config.domain.outside_centroids if centroids else 0
        self.register_buffer("domain_centroids", torch.zeros(centroids, dim) if centroids else None)
        self.register_buffer("domain_outside", torch.zeros(outside, dim) if outside else None)
        if centroids:
            self.extra_columns = (*type(self).extra_columns, "domain_distance", *(("photo_margin",) if outside else ()))

    @classmethod
    def from_config(cls, config: JudgeConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, pretrained: bool = True) -> JudgeDetector:
        return cls(config, build_encoder(config, pretrained)).to(resolve_device(device), dtype=dtype)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised batch (B, 3, H, W) -> unit embeddings (B, embed_dim)."""
        return self.embed_features(self.encoder(self.front_end(batch)))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, encoder dim) -> unit embeddings: training on cached encoder features."""
        return F.normalize(self.projection(features), dim=1)

    def trace_score(self, batch: torch.Tensor) -> torch.Tensor:
        """``max_k cos(z, t_k)``: high for images near a natural trace (real-looking)."""
        return trace_similarity(self.embed(batch), self.traces).max(1).values

    def calibrate(self, score: torch.Tensor) -> torch.Tensor:
        """Trace score -> logit of "generated" with the fitted logistic calibration."""
        return self.config.calibration_slope * score + self.config.calibration_intercept

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.trace_score(batch))

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

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[dict]]:
        """P(generated) from the mean trace similarity of each image's crops; see :meth:`score_features`."""
        shapes: list[tuple[int, int]] = []

        def crop_stream() -> Iterator[Image.Image]:
            for image in images:
                crops, rows, cols = self.views(image)
                shapes.append((rows, cols))
                yield from crops

        stream, features = crop_stream(), []
        while chunk := list(itertools.islice(stream, CROP_BATCH)):
            batch = normalize(torch.stack([to_tensor(c) for c in chunk]), self.config.preprocess)
            features.append(self.encoder(self.front_end(batch.to(self.device, self.dtype))).float())
        per_image = torch.cat(features).split([rows * cols for rows, cols in shapes])
        return self.score_features(per_image, [image.size for image in images], shapes)

    @torch.inference_mode()
    def score_features(self, features: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
                       shapes: Sequence[tuple[int, int]] | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Scores from each image's crop features (views, encoder dim), as :meth:`score_images` gives
        them, so cached encoder features are scored exactly as a scan would score the images.

        ``score_map`` holds every crop's own P(generated), rows x cols (``shapes``; none for a
        ``fixed`` single centre crop, which reads only part of the image). With a ``domain`` check,
        ``outside_domain`` says why an image of that size (w, h) cannot be judged (else None),
        ``domain_distance`` is its crops' mean distance to the training reference and
        ``photo_margin`` how much nearer they are to it than to the non-photo reference."""
        probs, extras = [], []
        for index, (feats, size) in enumerate(zip(features, sizes)):
            feats = feats.to(self.device, self.dtype)
            sims = trace_similarity(self.embed_features(feats), self.traces).max(1).values.float().cpu()
            mean = sims.mean()
            probs.append(torch.sigmoid(self.calibrate(mean)))
            extra: dict = {"trace_similarity": round(float(mean), 6)}
            distance = margin = None
            if self.domain_centroids is not None:
                near = nearest_distance(feats, self.domain_centroids)
                distance = float(near.mean())
                extra["domain_distance"] = round(distance, 6)
                if self.domain_outside is not None:
                    margin = float((nearest_distance(feats, self.domain_outside) - near).mean())
                    extra["photo_margin"] = round(margin, 6)
            if self.config.domain is not None:
                extra["outside_domain"] = outside_reason(size, distance, self.config.domain, margin)
            rows, cols = shapes[index] if shapes is not None else (1, len(sims))
            if self.config.grid == "cover" or rows * cols > 1:  # one centre crop maps nothing
                extra["score_map"] = torch.sigmoid(self.calibrate(sims)).reshape(rows, cols).numpy()
            extras.append(extra)
        return torch.stack(probs), extras


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
