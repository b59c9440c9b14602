"""Choose a detector's threshold on the user's own real photos, with an honest false-positive bound.

With ``n`` real photos scored, flagging everything above the ``(j+1)``-th highest score has a
true false-positive rate (on new photos like these) distributed as ``Beta(j+1, n-j)`` whatever
the detector (an order statistic of exchangeable scores: the split-conformal argument). The
threshold keeps the largest ``j`` with ``P(FPR > target) <= 1 - confidence``, i.e.
``binom.cdf(j, n, target) <= 1 - confidence``. Even ``j = 0`` (threshold above every calibration
score) needs ``(1 - target)^n <= 1 - confidence``: fewer photos than that cannot support the
target, and calibration refuses, saying how many are needed.

The argument needs distinct photos: 59 copies of one photo are one observation, not 59, and would
set a threshold from one score. Files with the same bytes are therefore counted once
(:func:`unique_by_content`); near-copies (the same photo re-encoded or resized) are not detected.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffsleuth.detectors.base import CONFIG_NAME, WEIGHTS_NAME
from diffsleuth.io.guards import InputError, open_regular

REPORT_JSON, REPORT_MD, HISTOGRAM_PNG = "report.json", "report.md", "scores_histogram.png"
MIN_TARGET_FPR = 1e-6
"""Smallest target accepted: it already needs about three million photos."""


class CalibrationError(ValueError):
    """The photos cannot support the requested target (too few, or scores pinned at 1)."""


def photos_needed(target_fpr: float, confidence: float) -> int:
    """Fewest real photos for which some threshold meets ``target_fpr`` with ``confidence``.

    At least ``1 / target_fpr`` (below that, one flagged photo already exceeds the target) and
    at least the ``n`` with ``(1 - target_fpr)^n <= 1 - confidence``.
    """
    check_target(target_fpr, confidence)
    by_bound = math.ceil(math.log(1.0 - confidence) / math.log1p(-target_fpr) - 1e-9)
    return max(by_bound, math.ceil(1.0 / target_fpr - 1e-9))


def check_target(target_fpr: float, confidence: float) -> None:
    """Refuse a target or confidence the bound cannot be computed for, naming the option."""
    if not MIN_TARGET_FPR <= target_fpr < 1.0:
        raise CalibrationError(f"--target-fpr must be at least {MIN_TARGET_FPR:g} and below 1 (a share of "
                               f"photos, e.g. 0.01), got {target_fpr:g}")
    if not 0.0 < confidence < 1.0:
        raise CalibrationError(f"--confidence must be between 0 and 1 (exclusive), got {confidence:g}")


def unique_by_content(files: Sequence[Path], chunk: int = 1 << 20) -> tuple[list[Path], int]:
    """The files whose bytes (SHA-256) differ from every earlier file's, in order, and how many
    were dropped as copies (links to one file included). A file that cannot be read is kept: the
    scoring then counts it as unreadable, naming why."""
    seen: set[bytes] = set()
    unique, duplicates = [], 0
    for path in files:
        digest = hashlib.sha256()
        try:
            with open_regular(path) as handle:
                while block := handle.read(chunk):
                    digest.update(block)
        except (InputError, OSError):
            unique.append(path)
            continue
        key = digest.digest()
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
            unique.append(path)
    return unique, duplicates


@dataclass(frozen=True)
class Calibration:
    n: int
    target_fpr: float
    confidence: float
    threshold: float
    allowed_exceedances: int
    """``j``: the threshold sits just above the ``(j+1)``-th highest calibration score."""
    flagged: int
    """Calibration photos at or above the threshold (``j`` or fewer when scores tie)."""
    calibration_fpr: float
    fpr_upper_bound: float
    """With ``confidence``, the FPR on new photos like these is at most this (<= target)."""


def choose_threshold(scores: np.ndarray, target_fpr: float, confidence: float = 0.95) -> Calibration:
    """The most permissive threshold whose FPR is at most ``target_fpr`` with ``confidence``."""
    from scipy.stats import beta, binom

    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    needed = photos_needed(target_fpr, confidence)
    if n < needed:
        raise CalibrationError(
            f"--target-fpr {target_fpr:g} at {confidence:.0%} confidence needs at least {needed} readable real "
            f"photos, got {n}: add {needed - n} more or raise --target-fpr")
    exceed = np.arange(n)
    ok = binom.cdf(exceed, n, target_fpr) <= 1.0 - confidence
    j = int(exceed[ok].max())
    threshold = float(np.nextafter(scores[n - 1 - j], np.inf))
    if threshold > 1.0:
        raise CalibrationError(
            f"{int((scores >= 1.0).sum())} of these {n} real photos score 1.0, the detector's maximum, more than "
            f"the {j} that the target allows with {n} photos: no threshold in [0, 1] meets it; add photos, "
            "raise --target-fpr or use another detector")
    flagged = int((scores >= threshold).sum())
    bound = float(beta.ppf(confidence, j + 1, n - j))
    return Calibration(n, target_fpr, confidence, threshold, j, flagged, flagged / n, bound)


def detection_rate(fake_scores: np.ndarray, threshold: float, confidence: float) -> dict:
    """Share of known fakes at or above ``threshold``, with its exact (Clopper-Pearson) interval."""
    from scipy.stats import binomtest

    fake_scores = np.asarray(fake_scores, dtype=np.float64)
    n, hits = len(fake_scores), int((fake_scores >= threshold).sum())
    if n == 0:
        return {"n": 0, "detected": 0, "rate": None, "interval": None}
    interval = binomtest(hits, n).proportion_ci(confidence_level=confidence, method="exact")
    return {"n": n, "detected": hits, "rate": hits / n, "interval": [float(interval.low), float(interval.high)]}


def write_detector(source: Path, output: Path, threshold: float, calibration: dict) -> None:
    """A detector folder: the source's config with the new threshold, and a copy of its weights.

    The weights are copied byte for byte, so the SHA-256 recorded in the config still checks.
    """
    meta = json.loads((source / CONFIG_NAME).read_text(encoding="utf-8"))
    meta["config"]["threshold"] = threshold
    meta["calibration"] = calibration
    shutil.copyfile(source / WEIGHTS_NAME, output / WEIGHTS_NAME)
    (output / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def plot_histogram(path: Path, real: np.ndarray, fakes: np.ndarray | None, threshold: float,
                   stored: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(real, bins=bins, alpha=0.7, label=f"your real photos (n={len(real)})", color="tab:green")
    if fakes is not None and len(fakes):
        ax.hist(fakes, bins=bins, alpha=0.5, label=f"--fakes (n={len(fakes)})", color="tab:red")
    ax.axvline(threshold, color="black", linestyle="-", label=f"calibrated threshold {threshold:.4f}")
    ax.axvline(stored, color="grey", linestyle="--", label=f"stored threshold {stored:.4f}")
    ax.set_xlabel("score (P(generated))")
    ax.set_yscale("log")
    ax.set_ylabel("images (log scale)")
    ax.legend(loc="upper center", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_markdown(report: dict) -> str:
    cal, fakes = report["calibration"], report.get("fakes")
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    conf = f"{cal['confidence']:.0%}"
    lines = [
        f"# Threshold calibrated on your photos: {report['detector']}", "",
        f"- Real photos scored: **{cal['n']}** ({report['unreadable']} unreadable, "
        f"{report.get('duplicates', 0)} copies of another photo's bytes, left out).",
        f"- Target: false-positive rate at most **{pct(cal['target_fpr'])}** with {conf} confidence.",
        f"- Chosen threshold: **{cal['threshold']:.6f}** (the detector's stored threshold: {report['stored_threshold']:.6f}).",
        f"- On the calibration photos: {cal['flagged']} of {cal['n']} flagged (FPR {pct(cal['calibration_fpr'])}); "
        f"at the stored threshold {report['stored_flagged']} of {cal['n']} ({pct(report['stored_flagged'] / cal['n'])}).",
        f"- Upper bound on the FPR for new photos like these: **{pct(cal['fpr_upper_bound'])}** "
        f"({conf} one-sided, order-statistic bound).",
    ]
    if fakes:
        if fakes["n"]:
            low, high = fakes["interval"]
            lines.append(f"- Known fakes (--fakes): {fakes['detected']} of {fakes['n']} detected "
                         f"({pct(fakes['rate'])}; {conf} exact interval {pct(low)} to {pct(high)}).")
        else:
            lines.append("- Known fakes (--fakes): none could be read.")
    lines += ["", f"![score histogram]({HISTOGRAM_PNG})", "",
              "How: the threshold sits just above the calibration score ranked "
              f"{cal['allowed_exceedances'] + 1} from the top, the most permissive choice "
              "whose false-positive rate exceeds the target with probability at most 1 - confidence "
              "(binomial / Beta order-statistic bound). The bound holds for photos drawn like these "
              "(same cameras, subjects, compression); other photos can differ.", "",
              f"Use it: `diffsleuth scan PHOTOS --detector {report['output']}`", ""]
    return "\n".join(lines)

