"""Training recipes by name, with one config shape the CLI can fill from JSON and overrides.

Every recipe's config extends :class:`TrainConfig` (data, output, device, seed, split fractions)
and its ``run(config) -> Path`` trains, selects the checkpoint on the validation split only, and
saves a detector folder with ``save_pretrained``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from diffsleuth.devices import resolve_device
from diffsleuth.io.datasets import ImageRecord, assign_splits, load_records
from diffsleuth.registry import LazyRegistry


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)
    output: str = "runs/detector"
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    split_seed: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_group: str = "path"
    max_images: int | None = None

    @property
    def data_seed(self) -> int:
        """The seed of the split (and of anything tied to it): ``split_seed``, else ``seed``.

        Set ``split_seed`` to vary initialisation and data order alone, on the same split.
        """
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class TrainerSpec:
    name: str
    config_class: type[TrainConfig]
    run: Callable[[Any], Any]


_TRAINERS: LazyRegistry[TrainerSpec] = LazyRegistry("training recipe", {
    "judge": "diffsleuth.detectors.judge.training",
    "judge-head": "diffsleuth.detectors.judge.head_training",
    "lare2": "diffsleuth.detectors.lare2.training",
    "dnf": "diffsleuth.detectors.dnf.training",
    "dire": "diffsleuth.detectors.dnf.training",
})


def register_trainer(name: str, config_class: type[TrainConfig]):
    def wrap(run: Callable[[Any], Any]):
        _TRAINERS.register(name, TrainerSpec(name, config_class, run))
        return run

    return wrap


def trainer_spec(name: str) -> TrainerSpec:
    return _TRAINERS.get(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate decayed from its set value to zero along a half cosine over ``total_steps``
    steps (held at zero after), stepped once per optimizer step; the trainers share one schedule."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))


def split_records(config: TrainConfig) -> dict[str, list[ImageRecord]]:
    """Load every data root and split train/val/test deterministically (existing splits kept)."""
    if not config.data:
        raise ValueError("no training data given (set `data`, e.g. --data path/to/dataset)")
    records: list[ImageRecord] = []
    for root in config.data:
        records.extend(r for r in load_records(root) if r.label is not None)
    if not records:
        raise ValueError(f"no labelled images found in {config.data}")
    records = assign_splits(records, config.val_fraction, config.test_fraction, config.data_seed,
                            group=config.split_group)
    if config.max_images is not None:
        rng = random.Random(config.data_seed)
        rng.shuffle(records)
        records = sorted(records[: config.max_images], key=lambda r: str(r.path))
    splits: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    for record in records:
        splits.setdefault(record.split or "train", []).append(record)
    if not splits["train"]:
        raise ValueError("the training split is empty")
    return splits


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The accuracy-maximising threshold on VALIDATION scores (midpoints; 0.5 if degenerate)."""
    values = np.unique(probs)
    if len(values) < 2 or len(np.unique(labels)) < 2:
        return 0.5
    candidates = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2, [1.0]])
    accs = [float(((probs >= t) == labels).mean()) for t in candidates]
    return float(candidates[int(np.argmax(accs))])


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator for ``config.device`` / ``config.precision``.

    Accelerate owns device placement (and DDP under ``accelerate launch`` or ``torchrun``: each
    process takes its share of every training batch, gradients are averaged, validation is
    gathered from all processes and only the main process saves); to pick one GPU of several,
    set ``CUDA_VISIBLE_DEVICES``.
    """
    device = resolve_device(config.device)
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}.get(config.precision)
    if mixed is None:
        raise ValueError(f"precision must be fp32, fp16 or bf16, not {config.precision!r}")
    # split_batches: ``batch_size`` stays the total per step, shared by the processes, so one or
    # N processes take the same optimisation steps (it must then be a multiple of N).
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed, split_batches=True)


def gather_batch(accelerator: Accelerator, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One evaluation batch from every process, in loader order, without the padding that evens
    out the shards (the loader must have gone through ``accelerator.prepare``). One process: as is."""
    if accelerator.num_processes == 1:
        return tensors
    return tuple(accelerator.gather_for_metrics(tuple(t.to(accelerator.device) for t in tensors)))


def mean_over_processes(accelerator: Accelerator, total: float, count: int) -> float:
    """``total / count`` summed over all processes, so every process takes the same decisions."""
    if accelerator.num_processes > 1:
        both = accelerator.reduce(torch.tensor([total, float(count)], device=accelerator.device), reduction="sum")
        total, count = float(both[0]), int(both[1])
    return total / max(1, count)
