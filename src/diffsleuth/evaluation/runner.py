"""Score labelled records with a detector and turn the scores into overall and per-group metrics.

Per-generator protocol: a row holds that generator's fakes against the real images of the test
set. If some reals carry the same generator name (GenImage: every subset has its own ``nature``
images) those are used ("own" reals); otherwise all reals of the set are shared by every row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from diffsleuth.detectors.base import Detector
from diffsleuth.evaluation.metrics import CI_KEYS, METRIC_KEYS, NAN, balanced_threshold, binary_metrics
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from diffsleuth.progress import progress as progress_bar

ImageTransform = Callable[[Image.Image], Image.Image]
UNKNOWN = "unknown"


@dataclass
class ScoredSet:
    """Scores of the records that decoded; ``failures`` lists the others as (path, reason)."""

    records: list[ImageRecord]
    scores: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    def attribute(self, name: str) -> list[str]:
        return [getattr(r, name) or UNKNOWN for r in self.records]


def compose(*transforms: ImageTransform | None) -> ImageTransform | None:
    """Apply the given transforms left to right; ``None`` entries are skipped."""
    steps = [t for t in transforms if t is not None]
    if not steps:
        return None

    def run(image: Image.Image) -> Image.Image:
        for step in steps:
            image = step(image)
        return image

    return run


def score_records(detector: Detector, records: Sequence[ImageRecord], *, transform: ImageTransform | None = None,
                  batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                  description: str = "scoring", progress: bool | None = None) -> ScoredSet:
    """Decode, optionally transform, and score labelled records in batches; bad files become failures."""
    unlabelled = [r for r in records if r.label is None]
    if unlabelled:
        raise ValueError(f"{unlabelled[0].path}: evaluation needs labelled images (0 real / 1 generated)")
    kept: list[ImageRecord] = []
    scores: list[float] = []
    failures: list[tuple[str, str]] = []
    with progress_bar(description, len(records), enabled=progress) as advance:  # None: only on a terminal
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            images, ok = [], []
            for record in chunk:
                try:
                    image = decode_image(record.path, max_pixels=max_pixels)
                    images.append(transform(image) if transform is not None else image)
                    ok.append(record)
                except ImageDecodeError as exc:
                    failures.append((str(record.path), exc.reason))
            if images:
                predictions = detector.predict(images, batch_size=batch_size)
                scores.extend(p.score for p in predictions)
                kept.extend(ok)
            advance(len(chunk))
    return ScoredSet(kept, np.asarray(scores, dtype=np.float64), failures)


def empty_row(note: str) -> dict:
    """A metrics row for a group with no images: every value NaN, with the reason."""
    row: dict = {key: NAN for key in METRIC_KEYS}
    row.update(balanced_acc=NAN, n=0, n_real=0, n_fake=0, notes=[note],
               ci={k: [NAN, NAN] for k in CI_KEYS})
    return row


def _at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    at = binary_metrics(labels, scores, threshold=threshold, n_bootstrap=0)
    return {"threshold": threshold, **{k: at[k] for k in ("acc", "real_acc", "fake_acc", "balanced_acc")}}


def metrics_row(labels: np.ndarray, scores: np.ndarray, *, val_threshold: float | None,
                n_bootstrap: int, seed: int, threshold: float = 0.5) -> dict:
    """binary_metrics at ``threshold`` (the detector's stored one in an evaluation), plus accuracies at
    the validation threshold and at the (labelled) oracle one.

    Both chosen thresholds maximise balanced accuracy, so compare their ``balanced_acc``.
    """
    if labels.size == 0:
        return empty_row("no images")
    row = binary_metrics(labels, scores, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed)
    if val_threshold is not None:
        row["val_threshold"] = _at_threshold(labels, scores, val_threshold)
    if labels.min() != labels.max():
        row["oracle"] = _at_threshold(labels, scores, balanced_threshold(labels, scores))
        row["oracle"]["note"] = "threshold chosen on this test set: an upper bound, not a result"
    return row


def group_selections(scored: ScoredSet, key: str) -> dict[str, tuple[np.ndarray, str]]:
    """For each value of ``key`` among the fakes: (mask of its fakes plus its reals, "own" or "shared")."""
    labels = scored.labels
    groups = np.array(scored.attribute(key), dtype=object)
    real = labels == 0
    selections = {}
    for name in sorted(set(groups[labels == 1])):
        own = real & (groups == name)
        reals = own if own.any() else real
        selections[name] = (((labels == 1) & (groups == name)) | reals, "own" if own.any() else "shared")
    return selections


def group_rows(scored: ScoredSet, key: str, *, val_threshold: float | None, n_bootstrap: int, seed: int,
               expected: Sequence[str] = (), threshold: float = 0.5) -> dict[str, dict]:
    """One row per value of ``key`` among the fakes (see the module docstring for which reals)."""
    labels, scores = scored.labels, scored.scores
    selections = group_selections(scored, key)
    rows: dict[str, dict] = {}
    for name in sorted(set(selections) | set(expected)):
        if name not in selections:
            rows[name] = empty_row(f"no generated images of {key} {name!r} in this set")
            continue
        chosen, reals = selections[name]
        rows[name] = metrics_row(labels[chosen], scores[chosen], val_threshold=val_threshold,
                                 n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
        rows[name]["reals"] = reals
    return rows


def choose_threshold(val: ScoredSet | None) -> float | None:
    """Balanced-accuracy threshold on a validation set, or None without one."""
    if val is None or val.scores.size == 0:
        return None
    return balanced_threshold(val.labels, val.scores)


def evaluate_scored(scored: ScoredSet, *, val_threshold: float | None = None, n_bootstrap: int = 1000,
                    seed: int = 0, expected_generators: Sequence[str] = (), threshold: float = 0.5) -> dict:
    """Overall, per-generator and (when records have one) per-family metrics of a scored set.

    Accuracies are at ``threshold``: an evaluation passes the detector's stored threshold, the one
    ``diffsleuth scan`` labels with."""
    common = dict(val_threshold=val_threshold, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
    if scored.scores.size == 0:
        raise ValueError("no image could be scored: nothing to evaluate")
    result = {
        "overall": metrics_row(scored.labels, scored.scores, **common),
        "per_generator": group_rows(scored, "generator", expected=expected_generators, **common),
    }
    if any(r.family for r in scored.records):
        result["per_family"] = group_rows(scored, "family", **common)
    return result


def write_scores_csv(scored: ScoredSet, path: Path, condition: str | None = None) -> None:
    """Per-image scores (path, label, generator, family, split, score); failures with an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["path", "label", "generator", "family", "split", "score", "error"]
    if condition is not None:
        columns.insert(0, "condition")
    mode = "a" if condition is not None and path.exists() else "w"
    with path.open(mode, newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        if mode == "w":
            writer.writeheader()
        extra = {"condition": condition} if condition is not None else {}
        for record, score in zip(scored.records, scored.scores):
            writer.writerow({**extra, "path": str(record.path), "label": record.label,
                             "generator": record.generator or "", "family": record.family or "",
                             "split": record.split or "", "score": f"{score:.6f}", "error": ""})
        for failed, reason in scored.failures:
            writer.writerow({**extra, "path": failed, "label": "", "generator": "", "family": "",
                             "split": "", "score": "", "error": reason})


def json_safe(value):
    """NaN and infinity become null so that metrics.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
