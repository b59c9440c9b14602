"""Metric functions against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from diffsleuth.evaluation.metrics import (
    METRIC_KEYS,
    balanced_threshold,
    binary_metrics,
    bootstrap_intervals,
    equal_error_rate,
    expected_calibration_error,
    tpr_at_fpr,
    weighted_auc_ap,
)


def test_hand_computed_case():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    m = binary_metrics(labels, scores, n_bootstrap=0)
    assert set(METRIC_KEYS) <= set(m)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["real_acc"] == pytest.approx(3 / 4) and m["fake_acc"] == pytest.approx(3 / 4)
    # 15 of 16 (fake, real) pairs are ordered correctly: only 0.4 < 0.6.
    assert m["auc"] == pytest.approx(15 / 16)
    # Ranking 0.9 F, 0.8 F, 0.7 F, 0.6 R, 0.4 F: AP = (1 + 1 + 1 + 4/5) / 4.
    assert m["ap"] == pytest.approx(3.8 / 4)
    # No real scores above 0.6 except the 0.6 itself: at FPR 0 the TPR is 3/4.
    assert m["tpr_at_1fpr"] == pytest.approx(0.75) and m["tpr_at_5fpr"] == pytest.approx(0.75)
    assert m["n"] == 8 and m["n_real"] == 4 and m["n_fake"] == 4


def test_perfect_and_inverted_detectors():
    labels = [0, 0, 1, 1]
    perfect = binary_metrics(labels, [0.1, 0.2, 0.8, 0.9], n_bootstrap=0)
    assert perfect["auc"] == 1 and perfect["ap"] == 1 and perfect["eer"] == 0 and perfect["tpr_at_1fpr"] == 1
    inverted = binary_metrics(labels, [0.9, 0.8, 0.2, 0.1], n_bootstrap=0)
    assert inverted["auc"] == 0 and inverted["acc"] == 0 and inverted["eer"] == 1


def test_eer_interpolates_between_roc_points():
    # Reals 0.1 0.4, fakes 0.3 0.6: at threshold 0.4 FPR = FNR = 0.5.
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.4, 0.3, 0.6]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.integers(0, 2, n)
    scores = np.round(np.clip(labels * 0.2 + rng.random(n) * 0.8, 0, 1), 1)  # many ties
    m = binary_metrics(labels, scores, n_bootstrap=0)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores))
    weights = rng.integers(0, 4, size=(3, n))
    weights[0] = 1
    auc, ap = weighted_auc_ap(labels, scores, weights)
    for row in range(3):
        assert auc[row] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights[row]))
        assert ap[row] == pytest.approx(average_precision_score(labels, scores, sample_weight=weights[row]))


def test_tpr_at_fpr_never_exceeds_the_fpr_budget():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = rng.random(500) * 0.6 + labels * 0.4
    real = np.sort(scores[labels == 0])[::-1]
    t = tpr_at_fpr(labels, scores, 0.05)
    # Flag everything strictly above the 6th-highest real score (5 reals above, 5/n_real <= 5%?).
    allowed = int(np.floor(0.05 * real.size))
    threshold = real[allowed]
    assert t >= (scores[labels == 1] > threshold).mean() - 1e-12
    assert 0 <= t <= 1


def test_ece_hand_case_and_range():
    # All scores 0.8 in one bin, half of them generated: gap 0.3.
    assert expected_calibration_error([1, 0, 1, 0], [0.8] * 4) == pytest.approx(0.3)
    assert math.isnan(expected_calibration_error([1, 0], [1.5, 0.2]))


def test_one_class_input_gives_nan_with_a_note():
    m = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], n_bootstrap=50)
    assert m["fake_acc"] == pytest.approx(2 / 3) and math.isnan(m["real_acc"])
    for key in ("ap", "auc", "tpr_at_1fpr", "tpr_at_5fpr", "eer"):
        assert math.isnan(m[key])
    assert any("one class" in note for note in m["notes"])
    assert math.isnan(m["ci"]["auc"][0]) and not math.isnan(m["ci"]["acc"][0])


def test_empty_and_malformed_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        binary_metrics([], [])
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.1, float("nan")])


def test_bootstrap_is_seeded_contains_the_estimate_and_is_wider_for_small_sets():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    a = bootstrap_intervals(labels, scores, n_bootstrap=300, seed=1)
    assert a == bootstrap_intervals(labels, scores, n_bootstrap=300, seed=1)
    assert a != bootstrap_intervals(labels, scores, n_bootstrap=300, seed=2)
    m = binary_metrics(labels, scores, n_bootstrap=300, seed=1)
    for key in ("acc", "ap", "auc"):
        lo, hi = m["ci"][key]
        assert lo <= m[key] <= hi
    small = bootstrap_intervals(labels[:20], scores[:20], n_bootstrap=300, seed=1)
    width = lambda ci: ci["auc"][1] - ci["auc"][0]  # noqa: E731
    assert width(small) > 2 * width(a)


def test_balanced_threshold_separates_a_separable_set():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.35, 0.9]
    t = balanced_threshold(labels, scores)
    assert 0.3 < t <= 0.35
    assert binary_metrics(labels, scores, threshold=t, n_bootstrap=0)["acc"] == 1.0
    with pytest.raises(ValueError, match="both"):
        balanced_threshold([1, 1], [0.2, 0.3])
