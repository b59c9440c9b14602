"""Train a judge's head (projection + natural traces) on cached features of a frozen encoder.

With a pretrained encoder that is never trained (the CLIP ONNX encoder of the default detector),
the expensive part, encoding images, is done once: every image is decoded, re-encoded by each of
``degradations`` (identical for real and generated images, so neither compression history nor
container can separate them), cut into the crops the detector reads at inference
(``JudgeDetector.views``) and encoded; the features go to the feature cache
(:mod:`diffsleuth.features.cache`), keyed by file content and by everything that shapes them
(encoder file and SHA-256, preprocessing, crop policy, degradation). Training the head on them
then takes minutes on a CPU, and a second run encodes nothing.

Data roles (:mod:`diffsleuth.evaluation.heldout`): the head trains on ``train``, the checkpoint is
chosen by validation AUC and the logistic calibration of the trace score is fitted on ``val``; the
threshold is the lowest that flags at most ``target_fpr`` of the ``calibration`` sources' photos
(real sources never trained on), and the operating point stored in ``config.json`` says what that
threshold does on every held-out role: ``check`` sources (real, used for nothing else), ``holdout``
families (generators never trained on) and the ``test`` split, with exact 95% intervals.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffsleuth.backbones.pypi_weights import cache_dir
from diffsleuth.detectors.judge.domain import DomainConfig, build_outside, build_reference
from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector, judge_loss, trace_similarity
from diffsleuth.detectors.judge.training import auc_of, fit_calibration
from diffsleuth.detectors.training import TrainConfig, cosine_schedule, register_trainer, seed_everything
from diffsleuth.evaluation.heldout import ROLES, HoldOut, Sample, cap_per_source, gather_samples
from diffsleuth.evaluation.metrics import flag_rate
from diffsleuth.features.cache import FeatureCache, content_hash
from diffsleuth.io.decode import decode_image
from diffsleuth.io.degrade import parse_degradation
from diffsleuth.io.preprocess import normalize, to_tensor
from diffsleuth.progress import echo, progress, track
from diffsleuth.settings import config_to_dict

TRAINING_LOG = "training_log.json"


@dataclass
class JudgeHeadTrainConfig(TrainConfig):
    """What ``diffsleuth train judge-head`` reads; ``model`` becomes the detector's config."""

    output: str = "runs/judge-head"
    model: JudgeConfig = field(default_factory=JudgeConfig)
    degradations: list[str] = field(default_factory=lambda: ["jpeg:95", "jpeg:90", "jpeg:75"])
    holdout_families: list[str] = field(default_factory=list)
    calibration_sources: list[str] = field(default_factory=list)
    check_sources: list[str] = field(default_factory=list)
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    trace_temperature: float = 0.1
    trace_weight: float = 1.0
    target_fpr: float = 0.05
    calibration_c: float = 1.0
    max_per_source: int | None = None
    cache: str | None = None
    encode_batch: int = 32
    threads: int | None = None
    uncertain_fpr: float | None = 0.2
    """The ``uncertain`` band starts at the threshold that flags this share of the calibration photos."""
    domain_centroids: int = 32
    """k-means centroids of training features for the domain check (0: size check only)."""
    domain_per_class: int = 180
    """Training images per class in the reference, spread evenly over the class's sources."""
    domain_quantile: float = 0.99
    """``max_distance`` passes this share of the calibration photos."""
    domain_min_short_side: int = 128
    domain_outside_centroids: int = 16
    """k-means centroids of rendered non-photos and noise for the photo-margin check (0: none)."""
    domain_outside_per_kind: int = 8
    domain_outside_seed: int = 1
    """Seed of the non-photo renders (checks use other seeds: ``diffsleuth card`` and
    :mod:`diffsleuth.evaluation.verdict_rates` draw seed 0)."""


def extractor_config(config: JudgeConfig, degradation: str) -> dict:
    """Everything that shapes a cached feature: a change to any of it is a different cache."""
    return {"kind": "judge-views", "encoder": config.encoder, "backbone": config.backbone,
            "backbone_sha256": config.backbone_sha256, "front_end": config.front_end,
            "preprocess": asdict(config.preprocess), "grid": config.grid, "test_grid": config.test_grid,
            "max_short_side": config.max_short_side, "degradation": degradation}


@torch.inference_mode()
def encode_views(model: JudgeDetector, images: Sequence) -> list[torch.Tensor]:
    """Each image's crops (as ``model.views`` cuts them) through the frozen encoder: (views, dim)."""
    crops, counts = [], []
    for image in images:
        views, _, _ = model.views(image)
        crops.extend(views)
        counts.append(len(views))
    batch = normalize(torch.stack([to_tensor(c) for c in crops]), model.config.preprocess)
    features = model.encoder(model.front_end(batch.to(model.device))).float().cpu()
    return list(features.split(counts))


def cached_features(model: JudgeDetector, samples: Sequence[Sample], degradations: Sequence[str],
                    root: Path, batch: int) -> dict[str, list[torch.Tensor]]:
    """Per degradation, each sample's view features, encoding only what the cache lacks."""
    out: dict[str, list[torch.Tensor]] = {}
    keys = [content_hash(s.record.path) for s in track(samples, "hashing files")]
    for spec in degradations:
        cache = FeatureCache(root, extractor_config(model.config, spec))
        degrade = parse_degradation(spec)
        missing = [i for i, key in enumerate(keys) if key not in cache]
        with progress(f"encoding {spec} ({len(samples) - len(missing)} cached)", len(missing)) as advance:
            for start in range(0, len(missing), batch):
                chunk = missing[start:start + batch]
                images = [degrade(decode_image(samples[i].record.path)) for i in chunk]
                for i, features in zip(chunk, encode_views(model, images)):
                    cache.put(keys[i], {"features": features})
                advance(len(chunk))
        out[spec] = [cache.get(key)["features"] for key in keys]
    return out


def image_scores(model: JudgeDetector, features: Sequence[torch.Tensor]) -> np.ndarray:
    """Per image, the mean trace similarity over its views: what ``score_images`` calibrates."""
    with torch.no_grad():
        stacked = torch.cat(list(features))
        sims = trace_similarity(model.embed_features(stacked), model.traces).max(1).values
        return torch.stack([part.mean() for part in sims.split([len(f) for f in features])]).numpy()


def threshold_for_fpr(real_probs: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold (``score >= threshold`` flags) that flags at most ``target_fpr`` of ``real_probs``.

    Scores are float32 (the model's precision), so the threshold is the next float32 above the
    highest score that must not be flagged: it compares the same in float32 and in float64.
    """
    ordered = np.sort(np.asarray(real_probs, dtype=np.float32))[::-1]
    allowed = int(math.floor(target_fpr * ordered.size + 1e-9))
    if allowed >= ordered.size:
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.float32(np.inf)))


def training_rows(samples: Sequence[Sample], features: dict[str, list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of every training image under every degradation, with its label."""
    rows, labels = [], []
    for spec_features in features.values():
        for sample, feats in zip(samples, spec_features):
            if sample.role == "train":
                rows.append(feats)
                labels.extend([sample.record.label] * len(feats))
    return torch.cat(rows), torch.tensor(labels)


def role_scores(model: JudgeDetector, samples: Sequence[Sample], features: dict[str, list[torch.Tensor]],
                role: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Trace scores of one role, pooled over degradations: (scores, labels, sources)."""
    scores, labels, sources = [], [], []
    for spec_features in features.values():
        picked = [(s, f) for s, f in zip(samples, spec_features) if s.role == role]
        if picked:
            scores.append(image_scores(model, [f for _, f in picked]))
            labels.extend(s.record.label for s, _ in picked)
            sources.extend(s.source for s, _ in picked)
    return (np.concatenate(scores) if scores else np.zeros(0)), np.array(labels), sources


def train_head(model: JudgeDetector, cfg: JudgeHeadTrainConfig, rows: torch.Tensor, labels: torch.Tensor,
               validate) -> tuple[list[dict], int]:
    """AdamW with a cosine schedule over shuffled rows; keeps the epoch with the best validation."""
    params = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(rows) // cfg.batch_size)
    scheduler = cosine_schedule(optimizer, steps_per_epoch * cfg.epochs)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    history, best, best_epoch, best_state = [], -math.inf, 0, None
    for epoch in track(range(cfg.epochs), "training head"):
        order = torch.randperm(len(rows), generator=order_gen)
        parts_sum: dict[str, float] = {}
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            parts = judge_loss(model.embed_features(rows[idx]), labels[idx], model.traces, cfg.temperature,
                               cfg.trace_temperature, cfg.trace_weight)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + float(value.detach())
        entry = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in parts_sum.items()}}
        entry["val_auc"] = validate()
        selection = entry["val_auc"] if not math.isnan(entry["val_auc"]) else -entry["loss"]
        if selection > best:
            best, best_epoch, best_state = selection, epoch + 1, copy.deepcopy(model.state_dict())
        history.append(entry)
        echo(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}))
    model.load_state_dict(best_state)
    return history, best_epoch


def operating_point(model: JudgeDetector, samples: Sequence[Sample], features: dict[str, list[torch.Tensor]],
                    cfg: JudgeHeadTrainConfig) -> dict:
    """The shipped threshold's false-positive and detection rates, per role and source, with intervals."""
    threshold = model.config.threshold
    point: dict = {"threshold": threshold, "target_fpr": cfg.target_fpr, "degradations": list(cfg.degradations)}
    for role in ("calibration", "check", "holdout", "test"):
        scores, labels, sources = role_scores(model, samples, features, role)
        if not scores.size:
            continue
        flagged = torch.sigmoid(model.calibrate(torch.from_numpy(scores))).numpy() >= threshold
        block: dict = {}
        for label, name in ((0, "fpr"), (1, "tpr")):
            mask = labels == label
            if mask.any():
                block[name] = flag_rate(flagged[mask])
                block[f"{name}_by_source"] = {src: flag_rate(flagged[mask & (np.array(sources) == src)])
                                              for src in sorted({s for s, m in zip(sources, mask) if m})}
        point[role] = block
    return point


def reference_samples(samples: Sequence[Sample], per_class: int, seed: int) -> list[Sample]:
    """A class-balanced, seeded subset of the training images: at most ``per_class`` per class,
    the same number from each of the class's sources (fewer where a source has fewer)."""
    train = [s for s in samples if s.role == "train"]
    picked: list[Sample] = []
    for label in sorted({s.record.label for s in train}):
        group = [s for s in train if s.record.label == label]
        limit = math.ceil(per_class / len({s.source for s in group}))
        picked += cap_per_source(group, limit, seed)
    return picked


def outside_features(model: JudgeDetector, cfg: JudgeHeadTrainConfig, root: Path) -> list[torch.Tensor]:
    """Crop features of the rendered text pages, charts, screenshots and noise the photo-margin
    check compares against (seed ``domain_outside_seed``; thumbnails are left to the size check),
    cached under ``root`` by the rendered pixels, like the training features."""
    from diffsleuth.evaluation.out_of_domain import outside_inputs

    cache = FeatureCache(root, extractor_config(model.config, "none (rendered non-photos)"))
    images = [image for name, image in outside_inputs(cfg.domain_outside_seed, cfg.domain_outside_per_kind).items()
              if not name.startswith("thumbnail")]
    out = []
    for image in track(images, "encoding non-photos"):
        key = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
        if key not in cache:
            cache.put(key, {"features": encode_views(model, [image])[0]})
        out.append(cache.get(key)["features"])
    return out


def add_verdict_bands(model: JudgeDetector, calibration: Sequence[torch.Tensor], reference: Sequence[torch.Tensor],
                      cfg: JudgeHeadTrainConfig, record: dict, outside: Sequence[torch.Tensor] = ()) -> None:
    """Set the ``uncertain`` band and the domain check, and record in ``config.json`` how.

    ``calibration``: each calibration photo's crop features (real photos never trained on, every
    degradation pooled): the band starts where ``uncertain_fpr`` of them are flagged and
    ``max_distance`` passes ``domain_quantile`` of them. ``reference``: crop features of a
    balanced subset of the training images (:func:`reference_samples`): the k-means centroids.
    ``outside``: crop features of non-photos (:func:`outside_features`): the photo-margin check,
    whose ``min_margin`` passes ``domain_quantile`` of the calibration photos.
    ``record`` (which images, which degradation) is stored with the reference."""
    config = model.config
    if cfg.uncertain_fpr is not None and calibration:
        probs = torch.sigmoid(model.calibrate(torch.from_numpy(image_scores(model, calibration)))).numpy()
        config.uncertain_threshold = min(threshold_for_fpr(probs, cfg.uncertain_fpr), config.threshold)
        if config.operating_point is not None:
            config.operating_point["uncertain"] = {
                "threshold": config.uncertain_threshold, "target_fpr": cfg.uncertain_fpr,
                "meaning": "scores from this threshold up to the decision threshold are 'uncertain'; "
                           "calibration photos at or above it:",
                "calibration_fpr": flag_rate(probs >= config.uncertain_threshold),
                "degradations": record.get("calibration_degradations")}
    config.domain = DomainConfig(min_short_side=cfg.domain_min_short_side)
    if cfg.domain_centroids and reference and calibration:
        centroids, max_distance = build_reference(list(reference), list(calibration), cfg.domain_centroids,
                                                  cfg.domain_quantile, cfg.seed)
        config.domain = DomainConfig(
            min_short_side=cfg.domain_min_short_side, centroids=len(centroids), max_distance=max_distance,
            reference={**record, "crops": int(sum(len(f) for f in reference)), "k": len(centroids),
                       "kmeans": "spherical (cosine), k-means++ initialisation", "seed": cfg.seed,
                       "max_distance": f"passes {cfg.domain_quantile} of the calibration photos "
                                       f"({len(calibration)} image-degradation pairs; mean crop distance)"})
        model.domain_centroids = torch.from_numpy(centroids)
        if cfg.domain_outside_centroids and outside:
            far, min_margin = build_outside(list(outside), centroids, list(calibration), cfg.domain_outside_centroids,
                                            cfg.domain_quantile, cfg.seed)
            config.domain.outside_centroids, config.domain.min_margin = len(far), min_margin
            config.domain.reference["outside"] = (
                f"{len(outside)} images from diffsleuth.evaluation.out_of_domain.outside_inputs(seed="
                f"{cfg.domain_outside_seed}, per_kind={cfg.domain_outside_per_kind}) without thumbnails, "
                f"{int(sum(len(f) for f in outside))} crops, k={len(far)}; min_margin passes "
                f"{cfg.domain_quantile} of the calibration photos")
            model.domain_outside = torch.from_numpy(far)


def describe_reference(samples: Sequence[Sample], degradation: str) -> dict:
    """What a domain reference was built from, for ``config.json``."""
    counts = Counter(f"{s.source} ({'generated' if s.record.label else 'real'})" for s in samples)
    return {"images": len(samples), "images_by_source": dict(sorted(counts.items())),
            "degradation": degradation, "features": "the frozen encoder's output for every crop the judge reads"}


@register_trainer("judge-head", JudgeHeadTrainConfig)
def run(cfg: JudgeHeadTrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    started = time.monotonic()
    # Read from the config as it is logged, so a card rebuilds exactly this split from the log.
    holdout = HoldOut.from_training_config(config_to_dict(cfg))
    samples = cap_per_source(gather_samples(cfg.data, holdout), cfg.max_per_source, cfg.data_seed)
    if not any(s.role == "train" for s in samples):
        raise ValueError("no training images left after holding out families and sources")
    model = JudgeDetector.from_config(copy.deepcopy(cfg.model), device=cfg.device if cfg.device != "auto" else "cpu")
    if not model.external_modules:
        raise ValueError("judge-head trains on a frozen encoder's features: set model.encoder to onnx or clip")
    root = Path(cfg.cache) if cfg.cache else cache_dir() / "features"
    if hasattr(model.encoder, "enable_memo"):  # so `diffsleuth card --reuse-embeddings` finds these crops
        model.encoder.enable_memo(root.parent / "embeddings")
    features = cached_features(model, samples, cfg.degradations, root, cfg.encode_batch)
    model = model.to("cpu")
    rows, labels = training_rows(samples, features)

    def validate() -> float:
        scores, val_labels, _ = role_scores(model, samples, features, "val")
        return auc_of(val_labels, scores) if scores.size else float("nan")

    history, best_epoch = train_head(model, cfg, rows, labels, validate)
    model.eval()
    val_scores, val_labels, _ = role_scores(model, samples, features, "val")
    if val_scores.size:
        # regularised: validation (trained sources) is separated almost perfectly, and an unbounded
        # slope would saturate P(generated) at 1.0 in float32, leaving no room for a threshold
        slope, intercept, threshold = fit_calibration(val_labels, val_scores, cfg.target_fpr, cfg.calibration_c)
        model.config.calibration_slope, model.config.calibration_intercept = slope, intercept
        model.config.threshold = threshold
    calib_scores, calib_labels, _ = role_scores(model, samples, features, "calibration")
    if calib_scores.size:
        probs = torch.sigmoid(model.calibrate(torch.from_numpy(calib_scores))).numpy()
        model.config.threshold = threshold_for_fpr(probs[calib_labels == 0], cfg.target_fpr)
    model.config.operating_point = operating_point(model, samples, features, cfg)
    calibration = [f[i] for f in features.values() for i, s in enumerate(samples)
                   if s.role == "calibration" and s.record.label == 0]
    first = next(iter(features))
    reference = reference_samples(samples, cfg.domain_per_class, cfg.seed)
    index = {id(s): i for i, s in enumerate(samples)}
    add_verdict_bands(model, calibration, [features[first][index[id(s)]] for s in reference], cfg,
                      {**describe_reference(reference, first), "calibration_degradations": list(features)},
                      outside_features(model, cfg, root) if cfg.domain_outside_centroids and calibration else [])
    out = model.save_pretrained(cfg.output)
    counts = {role: sum(1 for s in samples if s.role == role) for role in ROLES}
    log = {"best_epoch": best_epoch, "seconds": round(time.monotonic() - started, 1), "history": history,
           "images_by_role": counts, "training_rows": len(rows), "training_config": config_to_dict(cfg),
           "sources": sorted({f"{s.role}:{s.source}" for s in samples})}
    (out / TRAINING_LOG).write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    return out

