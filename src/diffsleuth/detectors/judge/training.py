"""Train a natural-trace judge: shortcut-resistant augmentation, extended SupCon, calibration on val.

Both classes go through the same random degradation (downscale, blur, JPEG at a random quality)
before a small random crop, so neither compression history, scale nor image content separates
them as well as pixel statistics do. The checkpoint is chosen by validation AUC under a fixed,
seeded degradation of the same kind; the logistic calibration and the threshold are fitted on the
validation split too. Families named in ``holdout_families`` never reach training or validation.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffsleuth.settings import config_to_dict
from diffsleuth.detectors.image_grid import grid_crops, limit_scale
from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector, judge_loss
from diffsleuth.detectors.training import (
    TrainConfig,
    cosine_schedule,
    make_accelerator,
    register_trainer,
    seed_everything,
    split_records,
)
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import decode_image
from diffsleuth.io.degrade import blur, downscale, jpeg
from diffsleuth.io.preprocess import PreprocessConfig, normalize, padded_crop, to_tensor
from diffsleuth.progress import echo, progress, track

TRAINING_LOG = "training_log.json"


@dataclass
class JudgeTrainConfig(TrainConfig):
    """Everything ``diffsleuth train judge`` reads; the model fields become the detector's config."""

    output: str = "runs/judge"
    model: JudgeConfig = field(default_factory=JudgeConfig)
    holdout_families: list[str] = field(default_factory=list)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crop_size: int = 96
    temperature: float = 0.07
    trace_temperature: float = 0.1
    trace_weight: float = 1.0
    fake_margin: float = 0.0
    pull_fakes: bool = False
    real_only: bool = False
    jpeg_prob: float = 1.0
    jpeg_quality: tuple[int, int] = (60, 100)
    rescale_prob: float = 0.5
    rescale_range: tuple[float, float] = (0.5, 1.0)
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 1.0)
    history_quality: tuple[int, int] | None = None
    val_size: int = 128
    target_fpr: float = 0.05
    family_repeats: dict[str, int] = field(default_factory=dict)
    native_crops: dict[str, int] = field(default_factory=dict)
    native_crop_size: int = 384
    ema_decay: float | None = None
    threads: int | None = None


def degrade(image: Image.Image, label: int, cfg: JudgeTrainConfig, rng: random.Random) -> Image.Image:
    """The training degradation, identical in distribution for real and generated images.

    With ``history_quality`` set, a generated image is first JPEG-compressed once at a random
    quality in that range: every real training photo already carries such a compression from its
    source (Unsplash, BSDS500, wallpapers), so without it "has an earlier JPEG" means real.
    """
    if label == 1 and cfg.history_quality:
        image = jpeg(image, rng.randint(*cfg.history_quality))
    if rng.random() < cfg.rescale_prob:
        image = downscale(image, rng.uniform(*cfg.rescale_range))
    if rng.random() < cfg.blur_prob:
        image = blur(image, rng.uniform(*cfg.blur_sigma))
    if rng.random() < cfg.jpeg_prob:
        image = jpeg(image, rng.randint(*cfg.jpeg_quality))
    return image


def random_crop(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    left = rng.randint(0, max(image.width, size) - size)
    top = rng.randint(0, max(image.height, size) - size)
    crop = padded_crop(image, size, left, top)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def train_batch(images: Sequence[Image.Image], labels: Sequence[int], cfg: JudgeTrainConfig,
                preprocess: PreprocessConfig, rng: random.Random) -> torch.Tensor:
    tiles = [to_tensor(random_crop(degrade(img, label, cfg, rng), cfg.crop_size, rng))
             for img, label in zip(images, labels)]
    return normalize(torch.stack(tiles), preprocess)


def fixed_eval_batch(images: Sequence[Image.Image], records: Sequence[ImageRecord],
                     cfg: JudgeTrainConfig, preprocess: PreprocessConfig, size: int) -> torch.Tensor:
    """Validation input: each image degraded with its own seeded draw, then centre-cropped."""
    tiles = []
    for img, record in zip(images, records):
        rng = random.Random(f"{cfg.data_seed}:{record.path.name}")
        tiles.append(to_tensor(grid_crops(degrade(img, record.label, cfg, rng), size, 1)[0]))
    return normalize(torch.stack(tiles), preprocess)


@torch.inference_mode()
def trace_scores(model: JudgeDetector, batch: torch.Tensor, chunk: int = 64) -> np.ndarray:
    model.eval()
    out = [model.trace_score(batch[i:i + chunk].to(model.device)).float().cpu()
           for i in range(0, len(batch), chunk)]
    return torch.cat(out).numpy()


def auc_of(labels: np.ndarray, trace_sim: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, -trace_sim))


def fit_calibration(labels: np.ndarray, trace_sim: np.ndarray, target_fpr: float,
                    c: float = 1e4) -> tuple[float, float, float]:
    """Class-balanced logistic fit of P(generated) on the trace score; threshold from val reals.

    ``c`` is the inverse regularisation strength: a validation split the model separates perfectly
    makes a nearly unregularised fit arbitrarily steep. The threshold is 0.5 unless more than
    ``target_fpr`` of the validation reals would be flagged at 0.5, in which case it rises to their
    (1 - target_fpr) quantile.
    """
    from sklearn.linear_model import LogisticRegression

    if len(set(labels.tolist())) < 2:
        return -10.0, 5.0, 0.5
    fit = LogisticRegression(C=c, class_weight="balanced").fit(trace_sim.reshape(-1, 1), labels)
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    probs = 1.0 / (1.0 + np.exp(-(slope * trace_sim + intercept)))
    return slope, intercept, choose_threshold(probs[labels == 0], target_fpr)


def choose_threshold(real_probs: np.ndarray, target_fpr: float) -> float:
    """0.5, raised to the (1 - target_fpr) quantile of validation reals when that is higher."""
    if real_probs.size == 0:
        return 0.5
    return min(max(0.5, float(np.quantile(real_probs, 1.0 - target_fpr))), 0.999)


def load_images(records: Sequence[ImageRecord], max_short_side: int | None,
                desc: str) -> list[Image.Image]:
    """Decode each file once, at the scale inference reads it (the model's ``max_short_side``)."""
    cache: dict[Path, Image.Image] = {}
    for record in track(records, desc):
        if record.path not in cache:
            cache[record.path] = limit_scale(decode_image(record.path), max_short_side)
    return [cache[r.path] for r in records]


def repeat_families(records: Sequence[ImageRecord], repeats: dict[str, int]) -> list[ImageRecord]:
    """Repeat the records of some families: a large photo holds many distinct training crops."""
    return [r for r in records for _ in range(repeats.get(r.family or "", 1))]


def add_native_crops(records: Sequence[ImageRecord], images: Sequence[Image.Image], counts: dict[str, int],
                     size: int, seed: int) -> tuple[list[ImageRecord], list[Image.Image]]:
    """Append seeded ``size``-px crops of each listed family's files at their native resolution.

    Inference reads a large photo shrunk to ``max_short_side``, which leaves every training real
    dense and sharp, while generated images are used at their native, smoother scale. Crops of
    large photos at camera scale (defocus, sensor noise, demosaicing) show the model real pixels
    that are smooth too, as in close-ups and small photos that are never shrunk. Files smaller
    than ``size`` add nothing: they are used at native scale already.
    """
    out_records, out_images = list(records), list(images)
    for record in dict.fromkeys(r for r in records if counts.get(r.family or "", 0)):
        image = decode_image(record.path)
        if min(image.size) < size:
            continue
        rng = random.Random(f"{seed}:native:{record.path.name}")
        for _ in range(counts[record.family or ""]):
            out_records.append(record)
            out_images.append(random_crop(image, size, rng))
    return out_records, out_images


def usable_splits(cfg: JudgeTrainConfig) -> dict[str, list[ImageRecord]]:
    """Train/val/test splits with held-out families removed from train and val."""
    splits = split_records(cfg)
    held = set(cfg.holdout_families)
    for name in ("train", "val"):
        splits[name] = [r for r in splits[name] if r.family not in held]
    if cfg.real_only:
        splits["train"] = [r for r in splits["train"] if r.label == 0]
    return splits


def weight_average(net: JudgeDetector, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm statistics), or None.

    Validation, checkpoint choice and calibration then use the average: a smoother trajectory
    than the raw weights, so which epoch wins and where the model lands depend less on the last
    few noisy steps.
    """
    if not decay:
        return None
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class Embedder(nn.Module):
    """The training forward (embeddings) as a module of its own, so that under DDP the forward
    goes through the wrapper and the gradients of all processes are averaged."""

    def __init__(self, net: JudgeDetector) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.embed(batch)


def train_epoch(accelerator, model, optimizer, scheduler, cfg: JudgeTrainConfig,
                make_batch, batches: list[list[int]], desc: str,
                average: AveragedModel | None = None) -> list[dict[str, float]]:
    """One pass over ``batches`` of indices; returns the loss parts of every step.

    ``model`` is the prepared :class:`Embedder`; with several processes each one embeds its share
    of every batch (so the contrastive loss compares the images of one process's share).
    """
    model.train()
    net = accelerator.unwrap_model(model).net
    losses = []
    with progress(desc, len(batches)) as advance:
        for idx in batches:
            batch, labels = make_batch(idx[accelerator.process_index::accelerator.num_processes])
            with accelerator.autocast():
                z = model(batch.to(accelerator.device))
                parts = judge_loss(z.float(), labels.to(accelerator.device), net.traces.float(),
                                   cfg.temperature, cfg.trace_temperature, cfg.trace_weight,
                                   cfg.fake_margin, cfg.pull_fakes)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(parts["loss"])
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update_parameters(net)
            losses.append({k: float(v.detach()) for k, v in parts.items()})
            advance(loss=f"{losses[-1]['loss']:.3f}")
    return losses


@register_trainer("judge", JudgeTrainConfig)
def run(cfg: JudgeTrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = make_accelerator(cfg)
    seed_everything(cfg.seed)
    started = time.monotonic()
    splits = usable_splits(cfg)
    train_records = repeat_families(splits["train"], cfg.family_repeats)
    val_records = splits["val"]
    if not train_records:
        raise ValueError("no training images left after holding out families")
    train_images = load_images(train_records, cfg.model.max_short_side, "decoding train")
    train_records, train_images = add_native_crops(train_records, train_images, cfg.native_crops,
                                                   cfg.native_crop_size, cfg.seed)
    val_images = load_images(val_records, cfg.model.max_short_side, "decoding val")
    model = JudgeDetector.from_config(copy.deepcopy(cfg.model), device="cpu")
    preprocess = model.config.preprocess
    val_labels = np.array([r.label for r in val_records])
    val_batch = (fixed_eval_batch(val_images, val_records, cfg, preprocess, cfg.val_size)
                 if val_records else None)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_records) // cfg.batch_size)
    scheduler = cosine_schedule(optimizer, steps_per_epoch * cfg.epochs)
    embedder, optimizer, scheduler = accelerator.prepare(Embedder(model), optimizer, scheduler)
    model = accelerator.unwrap_model(embedder).net
    average = weight_average(model, cfg.ema_decay)
    labels_all = torch.tensor([r.label for r in train_records])
    rng = random.Random(cfg.seed if accelerator.num_processes == 1 else f"{cfg.seed}:{accelerator.process_index}")
    order_gen = torch.Generator().manual_seed(cfg.seed)

    def make_batch(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels_all[idx]
        return train_batch([train_images[i] for i in idx], labels.tolist(), cfg, preprocess, rng), labels

    history: list[dict] = []
    best_auc, best_state, best_epoch = -1.0, None, -1
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_records), generator=order_gen).tolist()
        batches = [order[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
        losses = train_epoch(accelerator, embedder, optimizer, scheduler, cfg, make_batch, batches,
                             f"epoch {epoch + 1}/{cfg.epochs}", average)
        entry = {"epoch": epoch + 1, **{k: float(np.mean([x[k] for x in losses])) for k in losses[0]}}
        net = average.module if average is not None else model
        if val_batch is not None:
            entry["val_auc"] = auc_of(val_labels, trace_scores(net, val_batch))
            selection = entry["val_auc"] if not math.isnan(entry["val_auc"]) else -entry["loss"]
        else:
            selection = -entry["loss"]
        if selection > best_auc:
            best_auc, best_epoch = selection, epoch + 1
            best_state = copy.deepcopy(net.state_dict())
        history.append(entry)
        echo(json.dumps(entry))

    net = model
    net.load_state_dict(best_state)
    net.eval()
    if val_batch is not None:
        slope, intercept, threshold = fit_calibration(val_labels, trace_scores(net, val_batch), cfg.target_fpr)
        net.config.calibration_slope, net.config.calibration_intercept = slope, intercept
        net.config.threshold = threshold
    out = Path(cfg.output)
    if accelerator.is_main_process:
        out = net.to("cpu").save_pretrained(cfg.output)
        log = {"best_epoch": best_epoch, "seconds": round(time.monotonic() - started, 1),
               "history": history, "train_images": len(train_records), "processes": accelerator.num_processes,
               "val_images": len(val_records), "training_config": config_to_dict(cfg)}
        (out / TRAINING_LOG).write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
    return out
