"""Training recipes for DNF and DIRE: cached features, ResNet from scratch, validation-only choices.

The recipe of the DNF paper: BCE with logits, Adam (lr 1e-4), batch 64, horizontal flips. Early
stopping watches validation accuracy: an epoch improves when it beats the best accuracy so far by
at least ``min_improvement`` (0.001, the official rule); after ``patience`` epochs without
improvement the learning rate is divided by 10, and training stops once it falls below ``min_lr``. The checkpoint with the
best validation accuracy is kept; the test split is scored once, after selection.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset

from diffsleuth.settings import config_to_dict
from diffsleuth.detectors.dnf.model import DireDetector, DireDetectorConfig, DnfConfig, DnfDetector, NoiseFeatureDetector
from diffsleuth.detectors.training import (
    TrainConfig,
    best_threshold,
    gather_batch,
    make_accelerator,
    mean_over_processes,
    register_trainer,
    seed_everything,
    split_records,
)
from diffsleuth.devices import resolve_dtype
from diffsleuth.evaluation.metrics import binary_metrics
from diffsleuth.features.cache import FeatureCache
from diffsleuth.features.extract import ReencodedExtractor, extract_splits
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.degrade import parse_degradation
from diffsleuth.progress import track

REPORT_NAME = "training_report.json"


@dataclass
class DnfTrainConfig(TrainConfig):
    """``reencode`` (e.g. ``jpeg:90``) is applied to both classes before the feature, to remove a
    dataset's format shortcut; it is part of the cache key."""

    output: str = "runs/dnf"
    detector: DnfConfig = field(default_factory=DnfConfig)
    cache: str = "feature-cache"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    patience: int = 5
    min_lr: float = 1e-6
    min_improvement: float = 0.001
    extract_batch_size: int = 8
    reencode: str = "none"

    def __post_init__(self) -> None:
        parse_degradation(self.reencode)


@dataclass
class DireTrainConfig(DnfTrainConfig):
    output: str = "runs/dire"
    detector: DireDetectorConfig = field(default_factory=DireDetectorConfig)


class CachedFeatures(Dataset):
    def __init__(self, items: list[tuple[ImageRecord, str]], cache: FeatureCache, name: str, flip: bool) -> None:
        self.items, self.cache, self.name, self.flip = items, cache, name, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record, key = self.items[index]
        entry = self.cache.get(key)
        if entry is None:
            raise RuntimeError(f"{record.path}: no cached feature (extraction incomplete?)")
        feature = entry[self.name].float()
        if self.flip and torch.rand(()) < 0.5:
            feature = feature.flip(-1)
        return feature, torch.tensor(float(record.label))


@torch.no_grad()
def score_loader(model: NoiseFeatureDetector, loader: DataLoader,
                 accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray, float]:
    """(P(generated), labels, mean BCE) over a prepared loader, gathered from every process."""
    model.eval()
    probs, labels, losses = [], [], []
    for features, target in loader:
        logits = model(features.to(accelerator.device)).float()
        target = target.to(accelerator.device)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        logits, target, loss = gather_batch(accelerator, logits, target, loss)
        probs.append(torch.sigmoid(logits).cpu())
        labels.append(target.cpu())
        losses.append(loss.cpu())
    y = torch.cat(labels).numpy().astype(int)
    return torch.cat(probs).numpy(), y, float(torch.cat(losses).sum()) / max(1, len(y))


def summarise(probs: np.ndarray, labels: np.ndarray, loss: float, threshold: float) -> dict[str, Any]:
    metrics = binary_metrics(labels, probs, threshold=0.5, n_bootstrap=0)
    return {"loss": loss, "acc": metrics["acc"], "auc": metrics["auc"], "ap": metrics["ap"],
            "n": metrics["n"], "threshold": threshold,
            "acc_at_threshold": float(((probs >= threshold) == labels).mean())}


def train_noise_detector(config: DnfTrainConfig, cls: type[NoiseFeatureDetector]) -> Path:
    generator = seed_everything(config.seed)
    accelerator = make_accelerator(config)
    detector = cls.from_config(config.detector, device="cpu")
    detector.extractor.to(accelerator.device, resolve_dtype(accelerator.device, config.precision))
    splits = split_records(config)
    cache, items = extract_splits(ReencodedExtractor(detector.extractor, config.reencode), splits,
                                  config.cache, config.extract_batch_size, accelerator.process_index,
                                  accelerator.num_processes, accelerator.wait_for_everyone)
    if not items["train"]:
        raise ValueError("no decodable training images")
    train_loader = DataLoader(CachedFeatures(items["train"], cache, cls.feature_name, flip=True),
                              batch_size=config.batch_size, shuffle=True, generator=generator)

    def loader(name: str) -> DataLoader | None:
        if not items[name]:
            return None
        return accelerator.prepare(DataLoader(CachedFeatures(items[name], cache, cls.feature_name, flip=False),
                                              batch_size=config.batch_size))

    val_loader = loader("val")
    classifier = detector.classifier.to(accelerator.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr)
    # The detector keeps the plain module (evaluation runs it in every process); training steps
    # go through the prepared one, which under DDP averages the gradients of all processes.
    classifier, optimizer, train_loader = accelerator.prepare(classifier, optimizer, train_loader)

    history: list[dict[str, Any]] = []
    best = -float("inf")
    best_state, best_epoch, waited = None, 0, 0
    for epoch in range(1, config.epochs + 1):
        detector.train()
        total, count = 0.0, 0
        for features, target in track(train_loader, f"epoch {epoch}/{config.epochs}"):
            with accelerator.autocast():
                loss = F.binary_cross_entropy_with_logits(classifier(features).squeeze(1).float(), target)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            total += loss.item() * len(target)
            count += len(target)
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": mean_over_processes(accelerator, total, count),
                                 "lr": optimizer.param_groups[0]["lr"]}
        if val_loader is not None:
            probs, labels, val_loss = score_loader(detector, val_loader, accelerator)
            entry["val"] = summarise(probs, labels, val_loss, 0.5)
            value = entry["val"]["acc"]
        else:
            value = -entry["train_loss"]
        history.append(entry)
        accelerator.print(f"epoch {epoch}: train loss {entry['train_loss']:.4f}"
                          + (f", val acc {entry['val']['acc']:.4f}" if val_loader is not None else ""))
        if best_state is None or value >= best + config.min_improvement:
            best, best_epoch, waited = value, epoch, 0
            best_state = copy.deepcopy(accelerator.unwrap_model(classifier).state_dict())
            continue
        waited += 1
        if waited >= config.patience:
            waited = 0
            for group in optimizer.param_groups:
                group["lr"] /= 10
            if optimizer.param_groups[0]["lr"] < config.min_lr:
                break

    detector.classifier.load_state_dict(best_state)
    report: dict[str, Any] = {"config": config_to_dict(config), "best_epoch": best_epoch,
                              "processes": accelerator.num_processes,
                              "selected_on": "val accuracy" if val_loader is not None else "train loss",
                              "history": history}
    threshold = 0.5
    if val_loader is not None:
        probs, labels, val_loss = score_loader(detector, val_loader, accelerator)
        threshold = best_threshold(probs, labels)
        report["val"] = summarise(probs, labels, val_loss, threshold)
    test_loader = loader("test")
    if test_loader is not None:
        report["test"] = summarise(*score_loader(detector, test_loader, accelerator), threshold)
    output = Path(config.output)
    if accelerator.is_main_process:
        detector.to("cpu", torch.float32).save_pretrained(output)
        (output / REPORT_NAME).write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
    return output


@register_trainer("dnf", DnfTrainConfig)
def run_dnf(config: DnfTrainConfig) -> Path:
    """Train a DNF detector and save the validation-selected classifier."""
    return train_noise_detector(config, DnfDetector)


@register_trainer("dire", DireTrainConfig)
def run_dire(config: DireTrainConfig) -> Path:
    """Train the DIRE baseline on the same backbone and recipe."""
    return train_noise_detector(config, DireDetector)
