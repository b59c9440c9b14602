"""Binary detection metrics with seeded bootstrap intervals.

Labels: 1 = generated (the positive class), 0 = real. Scores are P(generated) in [0, 1].
Point estimates come from scikit-learn. The bootstrap re-evaluates AUC/AP a thousand times, so it
uses a weighted form that equals scikit-learn's (ties included; tested against it).
Metrics that a one-class input cannot define are NaN and explained in ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

METRIC_KEYS = ("acc", "real_acc", "fake_acc", "ap", "auc", "tpr_at_1fpr", "tpr_at_5fpr", "eer", "ece", "n")
CI_KEYS = ("acc", "balanced_acc", "ap", "auc")
NAN = float("nan")
_BOOTSTRAP_CELLS = 1_000_000  # resample rows x images held in memory at once


def _as_arrays(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size == 0:
        raise ValueError("no samples: cannot compute metrics of an empty set")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (generated)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y, s


def tpr_at_fpr(labels: Sequence[int], scores: Sequence[float], max_fpr: float) -> float:
    """Highest true-positive rate reachable with a false-positive rate of at most ``max_fpr``."""
    y, s = _as_arrays(labels, scores)
    if y.min() == y.max():
        return NAN
    fpr, tpr, _ = roc_curve(y, s)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Error rate where false-positive and false-negative rates are equal (linear interpolation on the ROC)."""
    y, s = _as_arrays(labels, scores)
    if y.min() == y.max():
        return NAN
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1 (nothing flagged), ends at -1 (everything flagged)
    i = int(np.argmax(diff <= 0))
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion ``k / n``: a rate measured on few images
    (a 5% false-positive rate on 44 photos is 2 of them) needs its uncertainty said."""
    if n <= 0:
        return NAN, NAN
    from scipy.stats import binomtest

    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def flag_rate(flags: np.ndarray) -> dict:
    """A measured proportion of flagged images with its exact (Clopper-Pearson) 95% interval."""
    k, n = int(np.sum(flags)), int(np.size(flags))
    low, high = proportion_interval(k, n)
    return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci95": [low, high]}


def reliability_bins(labels: Sequence[int], scores: Sequence[float], n_bins: int = 15) -> list[dict]:
    """Equal-width bins of P(generated): per bin its count, mean score and observed fraction generated."""
    y, s = _as_arrays(labels, scores)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(s, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        bins.append({
            "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
            "mean_score": float(s[inside].mean()) if count else NAN,
            "frac_generated": float(y[inside].mean()) if count else NAN,
        })
    return bins


def expected_calibration_error(labels: Sequence[int], scores: Sequence[float], n_bins: int = 15) -> float:
    """Count-weighted mean gap between P(generated) and the observed fraction generated, over 15 equal bins."""
    y, s = _as_arrays(labels, scores)
    if s.min() < 0 or s.max() > 1:
        return NAN
    bins = reliability_bins(y, s, n_bins)
    return float(sum(b["count"] * abs(b["mean_score"] - b["frac_generated"]) for b in bins if b["count"]) / y.size)


def balanced_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Threshold maximising balanced accuracy (mean of real and fake accuracy); midpoint between scores."""
    y, s = _as_arrays(labels, scores)
    if y.min() == y.max():
        raise ValueError("choosing a threshold needs both real and generated images")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    chosen = thresholds[best]
    if not np.isfinite(chosen):
        return float(s.max()) + 1e-6
    below = s[s < chosen]
    return float((chosen + below.max()) / 2) if below.size else float(chosen)


def _accuracies(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float]:
    predicted = s >= threshold
    real, fake = y == 0, y == 1
    acc = float((predicted == fake).mean())
    real_acc = float((~predicted[real]).mean()) if real.any() else NAN
    fake_acc = float(predicted[fake].mean()) if fake.any() else NAN
    return acc, real_acc, fake_acc


def weighted_auc_ap(labels: Sequence[int], scores: Sequence[float],
                    weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision for each row of integer ``weights`` (R, N) over one set of images.

    A bootstrap resample is a set of multiplicities, so every resample shares one sort of the
    scores: tied scores form groups, and per group the weighted fake and real counts give AUC
    (Mann-Whitney, ties count half) and AP (precision at each distinct threshold, scikit-learn's
    step rule) in O(R x N) without re-sorting.
    """
    y, s = _as_arrays(labels, scores)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(-s, kind="stable")
    if np.any(order[1:] < order[:-1]):  # the bootstrap passes presorted data and skips this copy
        y, s, w = y[order], s[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    fake_w = np.add.reduceat(w * y, starts, axis=1)
    real_w = np.add.reduceat(w * (1 - y), starts, axis=1)
    n_fake, n_real = fake_w.sum(axis=1), real_w.sum(axis=1)
    real_below = n_real[:, None] - np.cumsum(real_w, axis=1)
    tp = np.cumsum(fake_w, axis=1)
    flagged = tp + np.cumsum(real_w, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (fake_w * (real_below + 0.5 * real_w)).sum(axis=1) / (n_fake * n_real)
        ap = (fake_w * tp / np.where(flagged > 0, flagged, 1)).sum(axis=1) / n_fake
    return auc, ap


def _stratified_counts(y: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (R, N) that resample reals and fakes separately, so every row keeps both classes."""
    counts = np.zeros((n_bootstrap, y.size))
    for cls in (0, 1):
        members = np.flatnonzero(y == cls)
        if members.size:
            draws = rng.integers(0, members.size, size=(n_bootstrap, members.size))
            draws += np.arange(n_bootstrap)[:, None] * members.size
            counts[:, members] = np.bincount(draws.ravel(), minlength=n_bootstrap * members.size).reshape(
                n_bootstrap, members.size)
    return counts


def bootstrap_intervals(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5,
                        n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for acc, balanced acc, AP and AUC; class counts held fixed (stratified).

    Holding the counts fixed treats the class mix as part of the design (it is, in a benchmark) and
    keeps every resample two-class, so AUC and AP are always defined.
    """
    y, s = _as_arrays(labels, scores)
    intervals = {key: [NAN, NAN] for key in CI_KEYS}
    if n_bootstrap <= 0:
        return intervals
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    rng = np.random.default_rng(seed)
    two_class = y.min() != y.max()
    correct = ((s >= threshold) == (y == 1)).astype(np.float64)
    fake = (y == 1).astype(np.float64)
    values: dict[str, list[np.ndarray]] = {key: [] for key in CI_KEYS}
    chunk = max(1, _BOOTSTRAP_CELLS // y.size)
    for start in range(0, n_bootstrap, chunk):
        counts = _stratified_counts(y, min(chunk, n_bootstrap - start), rng)
        values["acc"].append(counts @ correct / y.size)
        if two_class:
            fake_acc = counts @ (correct * fake) / fake.sum()
            real_acc = counts @ (correct * (1 - fake)) / (1 - fake).sum()
            values["balanced_acc"].append(0.5 * (fake_acc + real_acc))
            auc, ap = weighted_auc_ap(y, s, counts)
            values["auc"].append(auc)
            values["ap"].append(ap)
    alpha = (1.0 - level) / 2.0
    for key, chunks in values.items():
        if chunks:
            sample = np.concatenate(chunks)
            intervals[key] = [float(np.quantile(sample, alpha)), float(np.quantile(sample, 1.0 - alpha))]
    return intervals


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5,
                   n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """All headline metrics of one evaluation set, with 95% bootstrap intervals under ``ci``
    (``{"acc": [lo, hi], "balanced_acc": ..., "ap": ..., "auc": ...}``).

    Accuracies use ``threshold`` (score >= threshold means generated); ``balanced_acc`` is the
    mean of real and fake accuracy, which class imbalance cannot inflate. Metrics that need both
    classes are NaN for one-class input and ``notes`` says why. Raises ValueError on empty input.
    """
    y, s = _as_arrays(labels, scores)
    acc, real_acc, fake_acc = _accuracies(y, s, threshold)
    n_fake = int(y.sum())
    result = {
        "acc": acc, "real_acc": real_acc, "fake_acc": fake_acc, "balanced_acc": (real_acc + fake_acc) / 2,
        "ap": NAN, "auc": NAN, "tpr_at_1fpr": NAN, "tpr_at_5fpr": NAN, "eer": NAN,
        "ece": expected_calibration_error(y, s),
        "n": int(y.size), "n_real": int(y.size - n_fake), "n_fake": n_fake,
        "threshold": float(threshold),
        "notes": [],
    }
    if n_fake in (0, y.size):
        missing = "generated" if n_fake == 0 else "real"
        result["notes"].append(f"only one class (no {missing} images): ap, auc, tpr_at_*fpr and eer are undefined")
    else:
        result.update(
            ap=float(average_precision_score(y, s)),
            auc=float(roc_auc_score(y, s)),
            tpr_at_1fpr=tpr_at_fpr(y, s, 0.01),
            tpr_at_5fpr=tpr_at_fpr(y, s, 0.05),
            eer=equal_error_rate(y, s),
        )
        if result["n_real"] < 100:
            result["notes"].append(f"only {result['n_real']} real images: tpr_at_1fpr is coarse")
    if math.isnan(result["ece"]):
        result["notes"].append("scores outside [0, 1]: ece is undefined")
    result["ci"] = bootstrap_intervals(y, s, threshold, n_bootstrap, seed)
    return result
