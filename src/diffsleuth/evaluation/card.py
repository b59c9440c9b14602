"""Measure any detector for its model card: ``diffsleuth card DETECTOR --data ROOT ...``.

Every number in a card is computed here, never typed in, and the run is deterministic (seeded
bootstrap, seeded synthetic inputs), so a re-run reproduces ``card_metrics.json``. What is
measured, on images the detector never trained on (roles from :mod:`diffsleuth.evaluation.heldout`,
read from the detector's ``training_log.json`` when it has one):

- per data root and role with both classes (e.g. the test split), under each degradation applied
  to *both* classes identically: AUC and AP with bootstrap intervals, and the detection and
  false-positive rates at the detector's own threshold;
- per source (a generator family, a real-photo source) and degradation: the share flagged at the
  threshold, with an exact interval: the detection rate of unseen families, the false-positive
  rate of unseen photo sources;
- the share of each detector verdict (``generated``, ``uncertain``, ``outside the detector's
  domain``, ``no trace found``; :mod:`diffsleuth.verdict`) per source and degradation;
- out of domain: rendered text, charts and screenshots, and the photos bundled in wheels;
- beside the model, a colour-histogram logistic regression trained on the training images: where
  it matches the model, content alone separates the classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from diffsleuth.detectors.base import Detector
from diffsleuth.evaluation.heldout import UNSEEN_ROLES, HoldOut, Sample, cap_per_source, gather_samples
from diffsleuth.evaluation.metrics import binary_metrics, flag_rate
from diffsleuth.evaluation.out_of_domain import non_photos as make_non_photos
from diffsleuth.evaluation.out_of_domain import wheel_photos
from diffsleuth.io.decode import decode_image
from diffsleuth.io.degrade import parse_degradation
from diffsleuth.progress import track
from diffsleuth.verdict import DETECTOR_VERDICTS

TRAINING_LOG = "training_log.json"
HEADLINE = ("auc", "ap", "tpr_at_5fpr", "real_acc", "fake_acc", "n_real", "n_fake")
BASELINE_DEGRADATION = "jpeg:90"


def colour_histogram(image: Image.Image, bins: int = 8) -> np.ndarray:
    """Joint RGB histogram (bins^3), normalised: pure colour content, no pixel statistics."""
    array = np.asarray(image.convert("RGB")).reshape(-1, 3) // (256 // bins)
    index = array[:, 0] * bins * bins + array[:, 1] * bins + array[:, 2]
    hist = np.bincount(index, minlength=bins ** 3).astype(np.float64)
    return hist / hist.sum()


class HistogramBaseline:
    """Logistic regression on colour histograms; its threshold flags 5% of its training reals."""

    def __init__(self, images: Sequence[Image.Image], labels: Sequence[int]) -> None:
        from sklearn.linear_model import LogisticRegression

        feats = np.stack([colour_histogram(img) for img in images])
        self.model = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000).fit(feats, labels)
        real_scores = self.model.predict_proba(feats[np.asarray(labels) == 0])[:, 1]
        self.threshold = float(np.quantile(real_scores, 0.95)) if real_scores.size else 0.5

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.model.predict_proba(np.stack([colour_histogram(img) for img in images]))[:, 1]


def store_card_metrics(folder: Path, key: str, value: dict) -> Path:
    """Put ``value`` under ``key`` in ``folder``'s existing card_metrics.json (the card renders it)."""
    path = folder / "card_metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics[key] = value
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return path


def training_config(folder: Path | None) -> dict:
    """The logged training config of a detector folder (empty when it has none)."""
    if folder is None or not (folder / TRAINING_LOG).is_file():
        return {}
    return json.loads((folder / TRAINING_LOG).read_text(encoding="utf-8")).get("training_config", {})


def summarise(labels: np.ndarray, scores: np.ndarray, threshold: float, n_bootstrap: int, seed: int) -> dict:
    metrics = binary_metrics(labels, scores, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed)
    out = {k: metrics[k] for k in HEADLINE}
    out["ci"] = {k: metrics["ci"][k] for k in ("auc", "ap")}
    out["fpr_at_threshold"] = flag_rate(scores[labels == 0] >= threshold)
    out["tpr_at_threshold"] = flag_rate(scores[labels == 1] >= threshold)
    return out


def verdict_rates(verdicts: Sequence[str | None]) -> dict[str, dict]:
    """The share of each detector verdict among ``verdicts``, with exact intervals."""
    array = np.asarray(verdicts, dtype=object)
    return {verdict: flag_rate(array == verdict) for verdict in DETECTOR_VERDICTS}


def score_samples(detector: Detector, samples: Sequence[Sample], spec: str, batch_size: int,
                  baseline: HistogramBaseline | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Detector scores (and baseline scores, and detector verdicts) of ``samples`` under
    degradation ``spec``, streamed in chunks."""
    degrade = parse_degradation(spec)
    ours, hist, verdicts = [], [], []
    for start in track(range(0, len(samples), batch_size), f"scoring {spec}"):
        images = [degrade(decode_image(s.record.path)) for s in samples[start:start + batch_size]]
        predictions = detector.predict(images, batch_size=batch_size)
        ours.extend(p.score for p in predictions)
        verdicts.extend(p.detector_verdict for p in predictions)
        if baseline is not None:
            hist.extend(baseline.scores(images))
    return np.asarray(ours), (np.asarray(hist) if baseline is not None else None), np.asarray(verdicts, dtype=object)


def named_scores(detector: Detector, baseline: HistogramBaseline | None, named: dict[str, Image.Image]) -> dict:
    """Scores of images that are all real (or all out of domain): every flag is a false positive."""
    names = list(named)
    images = [named[n] for n in names]
    predictions = detector.predict(images, batch_size=8)
    ours = np.asarray([p.score for p in predictions])
    rows = [{"image": n, "size": list(named[n].size), "model": round(float(p.score), 4),
             "detector_verdict": p.detector_verdict} for n, p in zip(names, predictions)]
    block = {"rows": rows, "model": flag_rate(ours >= detector.config.threshold),
             "verdicts": verdict_rates([p.detector_verdict for p in predictions])}
    if baseline is not None:
        hist = baseline.scores(images)
        for row, h in zip(rows, hist):
            row["colour_histogram"] = round(float(h), 4)
        block["colour_histogram"] = flag_rate(hist >= baseline.threshold)
    return block


def fit_baseline(samples: Sequence[Sample]) -> HistogramBaseline | None:
    train = [s for s in samples if s.role == "train"]
    if len({s.record.label for s in train}) < 2:
        return None
    degrade = parse_degradation(BASELINE_DEGRADATION)
    images = [degrade(decode_image(s.record.path)) for s in track(train, "colour baseline")]
    return HistogramBaseline(images, [s.record.label for s in train])


def evaluate_card(detector: Detector, folder: Path | None, data: Sequence[str], degradations: Sequence[str],
                  roles: Sequence[str] = UNSEEN_ROLES, n_bootstrap: int = 1000, seed: int = 0,
                  batch_size: int = 32, non_photos: int = 8, max_per_source: int | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Everything the card reports, as a JSON-ready dict."""
    config = training_config(folder)
    holdout = HoldOut.from_training_config(config)
    samples = gather_samples(data, holdout)
    picked = cap_per_source([s for s in samples if s.role in roles], max_per_source, seed)
    log(f"card: {len(picked)} of {len(samples)} images in roles {', '.join(roles)}")
    baseline = fit_baseline(samples)
    threshold = float(detector.config.threshold)
    report: dict = {"detector": detector.name, "threshold": threshold,
                    "parameters": detector.trained_parameters(),
                    "operating_point": getattr(detector.config, "operating_point", None),
                    "data": list(data), "roles": list(roles), "degradations": list(degradations),
                    "max_per_source": max_per_source,
                    "holdout": vars(holdout), "trained_on_sources": sorted({s.source for s in samples if s.role == "train"}),
                    "sets": {}, "sources": {}}
    for spec in degradations:
        ours, hist, verdicts = score_samples(detector, picked, spec, batch_size, baseline)
        labels = np.array([s.record.label for s in picked])
        groups = sorted({(s.root, s.role) for s in picked})
        for root, role in groups:
            mask = np.array([(s.root, s.role) == (root, role) for s in picked])
            if len(set(labels[mask].tolist())) == 2:
                entry = {"model": summarise(labels[mask], ours[mask], threshold, n_bootstrap, seed)}
                if hist is not None:
                    entry["colour_histogram"] = summarise(labels[mask], hist[mask], baseline.threshold,
                                                          n_bootstrap, seed)
                report["sets"][f"{Path(root).name}/{role}/{spec}"] = entry
        for source, role, label in sorted({(s.source, s.role, s.record.label) for s in picked}):
            mask = np.array([(s.source, s.role, s.record.label) == (source, role, label) for s in picked])
            entry = {"label": "generated" if label == 1 else "real", "role": role,
                     "model": flag_rate(ours[mask] >= threshold), "verdicts": verdict_rates(verdicts[mask])}
            if hist is not None:
                entry["colour_histogram"] = flag_rate(hist[mask] >= baseline.threshold)
            report["sources"][f"{source}/{role}/{spec}"] = entry
    report["non_photos"] = named_scores(detector, baseline, make_non_photos(non_photos, seed))
    report["wheel_photos"] = named_scores(detector, baseline, wheel_photos())
    return report
