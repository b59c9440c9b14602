"""Robustness sweeps: the same degradation applied to every image of both classes, then scored.

Degrading only one class (or leaving the reals as the JPEGs they already are) measures the format,
not the detector. The degraded image goes to the detector unchanged in size: the detector's own
preprocessing brings it back to its input policy, as it would for any user image.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffsleuth.detectors.base import Detector
from diffsleuth.evaluation.runner import (
    ImageTransform,
    ScoredSet,
    compose,
    evaluate_scored,
    score_records,
)
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.io.degrade import parse_degradation

DEFAULT_SWEEP = (
    "jpeg:95", "jpeg:90", "jpeg:75", "jpeg:50", "jpeg:30",
    "blur:1", "blur:2", "blur:3",
    "down:0.5", "down:0.25",
    "down:0.5+jpeg:75",
)
SHARED_ONLINE = "down:0.5+jpeg:75"
SUMMARY_KEYS = ("acc", "real_acc", "fake_acc", "balanced_acc", "ap", "auc", "tpr_at_5fpr", "eer")


def parse_sweep(text: str | Sequence[str]) -> list[str]:
    """``default`` or a comma-separated list of degradation specs; each is validated."""
    items = [text] if isinstance(text, str) else list(text)
    specs: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            specs.extend(DEFAULT_SWEEP if part == "default" else [str(parse_degradation(part))])
    return list(dict.fromkeys(specs))


def condition_label(spec: str) -> str:
    return f"{spec} (shared online)" if spec == SHARED_ONLINE else spec


def run_sweep(detector: Detector, records: Sequence[ImageRecord], conditions: Sequence[str], *,
              equalize: ImageTransform | None = None, val_threshold: float | None = None,
              batch_size: int = 32, n_bootstrap: int = 1000, seed: int = 0,
              max_pixels: int = DEFAULT_MAX_PIXELS,
              clean: ScoredSet | None = None, threshold: float = 0.5) -> tuple[dict, dict[str, ScoredSet]]:
    """Score ``records`` under every condition; returns (report section, scored sets by condition).

    ``clean`` (already scored without degradation) becomes the baseline row of the summary.
    """
    scored: dict[str, ScoredSet] = {}
    section: dict = {"conditions": {}, "summary": []}
    if clean is not None:
        scored["clean"] = clean
    for spec in conditions:
        degradation = parse_degradation(spec)
        scored[spec] = score_records(detector, records, transform=compose(equalize, degradation),
                                     batch_size=batch_size, max_pixels=max_pixels, description=spec)
    for spec, result in scored.items():
        metrics = evaluate_scored(result, val_threshold=val_threshold, n_bootstrap=n_bootstrap, seed=seed,
                                  threshold=threshold)
        section["conditions"][spec] = metrics
        overall = metrics["overall"]
        row = {"condition": spec, "label": condition_label(spec), "n": overall["n"]}
        row.update({key: overall[key] for key in SUMMARY_KEYS})
        row["ci"] = overall["ci"]
        if "val_threshold" in overall:
            row["acc_at_val_threshold"] = overall["val_threshold"]["acc"]
        section["summary"].append(row)
    return section, scored
