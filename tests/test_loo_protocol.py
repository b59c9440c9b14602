"""The leave-out protocol and the feature heads it compares, on synthetic features."""

import numpy as np
import torch

from diffsleuth.evaluation.feature_heads import HeadOptions, row_weights, trainer_for
from diffsleuth.evaluation.loo_protocol import (FeatureSet, Fold, flagged_at_calibration, grid_folds,
                                                protocol_source, run_fold, summarise)


def synthetic(n: int = 40, dim: int = 16, seed: int = 0) -> FeatureSet:
    """Two fake families and two real sources; fakes sit along one direction, reals along another."""
    gen = torch.Generator().manual_seed(seed)
    feats, labels, sources = [], [], []
    for source, label, views in (("famA", 1, 1), ("famB", 1, 1), ("photos", 0, 1), ("faces", 0, 4), ("other", 0, 1)):
        for _ in range(n):
            base = torch.zeros(dim)
            base[0 if label else 1] = 3.0
            feats.append(base + torch.randn(views, dim, generator=gen))
            labels.append(label)
            sources.append(source)
    return FeatureSet(feats, np.array(labels), np.array(sources), np.array(sources))


def test_balanced_weights_give_each_source_the_same_total():
    data = synthetic()
    data.labels[:10], data.sources[:10] = 1, "tiny"  # a small family must weigh as much as a large one
    _, owner, _ = data.rows(np.ones(len(data.labels), bool))
    weights = row_weights(data, owner, balance=True)
    totals = {s: weights[data.sources[owner] == s].sum() for s in ("tiny", "famA", "famB")}
    assert np.allclose(list(totals.values()), totals["famA"])
    photo_total = weights[data.sources[owner] == "photos"].sum()
    assert np.isclose(photo_total, weights[data.sources[owner] == "faces"].sum())


def test_fold_trains_without_the_held_out_family_and_source():
    data = synthetic()
    seen = []

    def trainer(d, mask):
        seen.append(set(d.sources[mask]))
        return lambda features: np.array([float(f[:, 0].mean() - f[:, 1].mean()) for f in features])

    result = run_fold(data, Fold(("famA",), "faces"), trainer, np.ones(len(data.labels), bool))
    assert seen == [{"famB", "photos", "other"}]
    assert result.n_fake == 40 and result.n_real == 40 and result.caught["5%"] == 1.0


def test_heads_catch_a_separable_held_out_family():
    data = synthetic()
    mask = np.ones(len(data.labels), bool)
    for opts in (HeadOptions("logreg", balance=True), HeadOptions("judge", balance=True, epochs=10, batch_size=32),
                 HeadOptions("mlp", balance=True, positive=True, blend=0.25, epochs=10, batch_size=32)):
        results = [run_fold(data, fold, trainer_for(opts), mask) for fold in grid_folds(["famA"], ["photos"])]
        summary = summarise(results)
        assert summary["5%"]["mean"] >= 0.9, opts
    checks = flagged_at_calibration(data, trainer_for(HeadOptions("logreg")), mask, "photos", ["faces"])
    assert checks["faces"]["n"] == 40 and 0.0 <= checks["faces"]["5%"] <= 0.2


def test_sources_are_families_and_camera_makes():
    assert protocol_source(1, None, "stable-diffusion-1.4", "x/sd14-vs-unsplash", {}, "a.png") == "sd14"
    assert protocol_source(0, None, None, "x/sd14-vs-unsplash", {}, "a.png") == "unsplash"
    assert protocol_source(0, "faces", None, "x/generalisation", {}, "a.jpg") == "ffhq"
    assert protocol_source(0, "camera", None, "x/camera-originals", {"c.jpg": "camera-canon"}, "c.jpg") == "camera-canon"
    assert protocol_source(1, "gan", "cyclegan", "x/generalisation", {}, "g.jpg") == "gan"
