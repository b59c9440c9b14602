"""One evaluation run: score the test set (and a validation set), compute metrics, run the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from diffsleuth.detectors.base import Detector
from diffsleuth.evaluation.robustness import run_sweep
from diffsleuth.evaluation.runner import ScoredSet, choose_threshold, evaluate_scored, score_records
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.io.degrade import parse_degradation


@dataclass
class EvalOptions:
    """How to score: ``equalize`` re-encodes every image of both classes first; ``sweep`` lists conditions."""

    equalize: str | None = None
    sweep: list[str] = field(default_factory=list)
    batch_size: int = 32
    n_bootstrap: int = 1000
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS


def evaluate_detector(detector: Detector, records: Sequence[ImageRecord], options: EvalOptions, *,
                      val_records: Sequence[ImageRecord] | None = None,
                      expected_generators: Sequence[str] = ()) -> tuple[dict, dict[str, ScoredSet]]:
    """Metrics of ``detector`` on ``records``; returns (result dict, scored sets by condition)."""
    equalize = parse_degradation(options.equalize) if options.equalize else None
    clean = score_records(detector, records, transform=equalize, batch_size=options.batch_size,
                          max_pixels=options.max_pixels, description="test set")
    val = None
    if val_records:
        val = score_records(detector, val_records, transform=equalize, batch_size=options.batch_size,
                            max_pixels=options.max_pixels, description="validation set")
    val_threshold = choose_threshold(val)
    threshold = float(detector.config.threshold)  # accuracy at the threshold scan labels with
    result: dict = {
        "detector_name": detector.name,
        "equalize": str(equalize) if equalize else None,
        "thresholds": {
            "accuracy": threshold,
            "detector": threshold,
            "validation": val_threshold,
            "validation_images": 0 if val is None else int(val.scores.size),
            "rule": "validation threshold maximises balanced accuracy on the validation set; "
                    "the test set never chooses a threshold (rows' 'oracle' entries are labelled upper bounds)",
        },
        "n_bootstrap": options.n_bootstrap,
        "seed": options.seed,
    }
    result.update(evaluate_scored(clean, val_threshold=val_threshold, n_bootstrap=options.n_bootstrap,
                                  seed=options.seed, expected_generators=expected_generators, threshold=threshold))
    result["failures"] = [{"path": p, "error": e} for p, e in clean.failures]
    scored = {"clean": clean}
    if options.sweep:
        section, scored = run_sweep(detector, records, options.sweep, equalize=equalize,
                                    val_threshold=val_threshold, batch_size=options.batch_size,
                                    n_bootstrap=options.n_bootstrap, seed=options.seed,
                                    max_pixels=options.max_pixels, clean=clean, threshold=threshold)
        result["robustness"] = section
    return result, scored
