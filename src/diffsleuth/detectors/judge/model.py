"""Natural-trace judge: real images define the class, generated ones are whatever is not near it.

Our interpretation of "Let Real Images be as a Judger" (arXiv 2403.16513, no public code): an
encoder and projection head map an image to a unit embedding ``z``; ``K`` learnable unit vectors,
the *natural traces*, are trained jointly so that real images sit near one of them and generated
images sit far from all of them. The score is ``s(z) = max_k cos(z, t_k)`` and a logistic
calibration fitted on the validation split turns it into P(generated). The config
(:class:`JudgeConfig`) lives in the torch-free :mod:`diffsleuth.detectors.judge.config` and the
same scores without torch in :mod:`diffsleuth.detectors.judge.runtime`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffsleuth.detectors.base import Detector
from diffsleuth.detectors.registry import register_detector
from diffsleuth.devices import resolve_device
from diffsleuth.detectors.image_grid import cover_views, fixed_views, limit_scale  # noqa: F401
from diffsleuth.detectors.judge.config import (  # noqa: F401  (re-exported: their old import path)
    CROP_BATCH, ENCODERS, FRONT_ENDS, FROZEN_ENCODERS, JudgeConfig, JudgeCrops, encoder_defaults)
from diffsleuth.detectors.judge.domain import DomainConfig, domain_verdict, nearest_distance, outside_reason  # noqa: F401
from diffsleuth.io.preprocess import geometry  # noqa: F401
from diffsleuth.io.preprocess_torch import normalize, to_tensor

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


@register_detector
class JudgeDetector(JudgeCrops, Detector):
    """Encoder -> projection -> unit embedding; P(generated) from the nearest natural trace.
    ``reduce_input`` and ``views`` are :class:`JudgeCrops`'s (torch-free, shared with the runtime)."""

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
        faces = config.domain.face_centroids if centroids else 0
        self.register_buffer("domain_centroids", torch.zeros(centroids, dim) if centroids else None)
        self.register_buffer("domain_outside", torch.zeros(outside, dim) if outside else None)
        self.register_buffer("domain_faces", torch.zeros(faces, dim) if faces else None)
        if centroids:
            self.extra_columns = (*type(self).extra_columns, "domain_distance", *(("photo_margin",) if outside else ()),
                                  *(("face_margin",) if faces else ()))

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

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[dict]]:
        """P(generated) from the mean trace similarity of each image's crops; see :meth:`score_features`."""
        shapes: list[tuple[int, int]] = []
        features = []
        for chunk in self.crop_chunks(images, shapes):
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
            distance = margin = face = None
            if self.domain_centroids is not None:
                near = nearest_distance(feats, self.domain_centroids)
                distance = float(near.mean())
                extra["domain_distance"] = round(distance, 6)
                if self.domain_outside is not None:
                    margin = float((nearest_distance(feats, self.domain_outside) - near).mean())
                    extra["photo_margin"] = round(margin, 6)
                if self.domain_faces is not None:
                    face = float((near - nearest_distance(feats, self.domain_faces)).mean())
                    extra["face_margin"] = round(face, 6)
            if self.config.domain is not None:
                extra.update(domain_verdict(size, distance, margin, face, self.config.domain))
            rows, cols = shapes[index] if shapes is not None else (1, len(sims))
            if self.config.grid == "cover" or rows * cols > 1:  # one centre crop maps nothing
                extra["score_map"] = torch.sigmoid(self.calibrate(sims)).reshape(rows, cols).numpy()
            extras.append(extra)
        return torch.stack(probs), extras


def count_parameters(model: nn.Module) -> int:
    """A detector's own parameters (:meth:`Detector.trained_parameters`), else every parameter."""
    return model.trained_parameters() if isinstance(model, Detector) else sum(p.numel() for p in model.parameters())
