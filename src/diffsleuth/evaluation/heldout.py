"""Which images a detector may learn from and which grade it: generator families and real sources held out.

A detector is graded honestly only on what it never trained on. Besides the seeded per-file
train/val/test split, whole *sources* are held out: a source is a record's ``family``, else its
generator for generated images, else the name of its data root (``sd14-vs-unsplash`` for its
Unsplash photos). Roles:

- ``holdout``: generated images of ``holdout_families``, never trained nor validated on.
- ``calibration``: real photos of ``calibration_sources``, never trained on; the threshold is set
  on them.
- ``check``: real photos of ``check_sources``, used for nothing but measuring false positives.
- ``train`` / ``val`` / ``test``: everything else, by the seeded split.

The same description, stored in a training log, lets ``diffsleuth card`` recover the roles later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffsleuth.io.datasets import ImageRecord, assign_splits, load_records, stable_fraction

ROLES = ("train", "val", "test", "holdout", "calibration", "check")
UNSEEN_ROLES = ("test", "holdout", "calibration", "check")


@dataclass(frozen=True)
class Sample:
    """One labelled image, the source it is held out by, and its role."""

    record: ImageRecord
    source: str
    role: str
    root: str


@dataclass
class HoldOut:
    """The split and the held-out families and sources (field names as in the training configs)."""

    holdout_families: list[str] = field(default_factory=list)
    calibration_sources: list[str] = field(default_factory=list)
    check_sources: list[str] = field(default_factory=list)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    split_group: str = "path"

    @classmethod
    def from_training_config(cls, config: dict) -> HoldOut:
        """The hold-out of a logged training config (any recipe; absent keys take the defaults)."""
        seed = config.get("split_seed")
        return cls(holdout_families=list(config.get("holdout_families", [])),
                   calibration_sources=list(config.get("calibration_sources", [])),
                   check_sources=list(config.get("check_sources", [])),
                   val_fraction=config.get("val_fraction", 0.15), test_fraction=config.get("test_fraction", 0.15),
                   seed=config.get("seed", 0) if seed is None else seed,
                   split_group=config.get("split_group", "path"))

    def role(self, record: ImageRecord, source: str) -> str:
        if record.label == 1 and source in self.holdout_families:
            return "holdout"
        if record.label == 0 and source in self.calibration_sources:
            return "calibration"
        if record.label == 0 and source in self.check_sources:
            return "check"
        return record.split or "train"


def source_of(record: ImageRecord, root: str) -> str:
    if record.family:
        return record.family
    if record.label == 1 and record.generator:
        return record.generator
    return root_name(root)


def root_name(root: str) -> str:
    return Path(root).stem if str(root).endswith(".csv") else Path(root).name


def gather_samples(data: Sequence[str], holdout: HoldOut) -> list[Sample]:
    """Every labelled image under ``data`` with its source and role."""
    if not data:
        raise ValueError("no data given (set `data`, e.g. --data path/to/dataset)")
    samples = []
    for root in data:
        records = [r for r in load_records(root) if r.label is not None]
        records = assign_splits(records, holdout.val_fraction, holdout.test_fraction, holdout.seed,
                                group=holdout.split_group)
        for record in records:
            source = source_of(record, root)
            samples.append(Sample(record, source, holdout.role(record, source), str(root)))
    return samples


def cap_per_source(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """At most ``limit`` images of each (source, role, class), a seeded choice by file name."""
    if limit is None:
        return list(samples)
    groups: dict[tuple, list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.source, sample.role, sample.record.label), []).append(sample)
    kept = {id(s) for group in groups.values()
            for s in sorted(group, key=lambda s: stable_fraction(s.record.path.name, seed))[:limit]}
    return [s for s in samples if id(s) in kept]
