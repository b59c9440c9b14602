"""Leave-one-family-out x leave-one-real-source-out on cached encoder features.

Why: a detector's score on a generator family or a kind of real photo it trained on says little
about the next one. Each fold removes one generator family (all its images) and one real source
from training, trains a head on what is left, sets its thresholds on the held-out real source
(the scores that flag 5% and 1% of it) and counts how much of the held-out family it catches.
The mean says how good a recipe is on average, the worst fold how badly it can fail.

Sources come from the development sets' manifests (:func:`protocol_source`): fakes by family (the
multigen families, SD 1.4, the 2022-era pair, the GANs, StyleGAN2 faces), reals by origin, camera
originals by make (never by image: one camera's photos share its processing). Features are read
from the feature cache that ``diffsleuth train judge-head`` fills (same key), so the protocol and
the shipped training see the same crops; an image missing from the cache is skipped and counted.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffsleuth.detectors.judge.head_training import extractor_config, threshold_for_fpr
from diffsleuth.detectors.judge.model import JudgeConfig
from diffsleuth.evaluation.heldout import HoldOut, gather_samples, root_name
from diffsleuth.features.cache import FeatureCache, content_hash

CAMERA_GROUPS = {"canon": "camera-canon", "nikon": "camera-nikon-sony-panasonic",
                 "sony": "camera-nikon-sony-panasonic", "panasonic": "camera-nikon-sony-panasonic"}
REAL_RENAMES = {"sd14-vs-unsplash": "unsplash", "faces": "ffhq", "gan-matched-real": "gan-real"}
FAKE_RENAMES = {"stable-diffusion-1.4": "sd14", "gan-faces": "stylegan2-faces"}


@dataclass
class FeatureSet:
    """Per image: its view features (views, dim), label, protocol source and generator.

    ``extra`` holds the same images' features under other deliveries (re-encodings applied to both
    classes alike): training rows only; folds are always scored on ``features``.
    """

    features: list[torch.Tensor]
    labels: np.ndarray
    sources: np.ndarray
    generators: np.ndarray
    skipped: int = 0
    extra: list[list[torch.Tensor]] = field(default_factory=list)

    def rows(self, mask: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The training views of the masked images stacked, with each view's image index and label."""
        index = np.flatnonzero(mask)
        parts = [self.features, *self.extra]
        owner = np.concatenate([np.repeat(index, [len(p[i]) for i in index]) for p in parts])
        return torch.cat([p[i] for p in parts for i in index]), owner, self.labels[owner]

    def with_extra(self, others: Sequence[FeatureSet]) -> FeatureSet:
        """This set (its images in the same order) trained also on ``others``' deliveries."""
        return FeatureSet(self.features, self.labels, self.sources, self.generators, self.skipped,
                          [o.features for o in others])


def camera_makes(root: str) -> dict[str, str]:
    """File name -> protocol source for camera originals, grouped by make (from the manifest)."""
    manifest = Path(root) / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("camera_make")]
    return {Path(row["file"]).name: CAMERA_GROUPS.get(row["camera_make"].split()[0].lower(), "camera-other")
            for row in rows}


def protocol_source(label: int, family: str | None, generator: str | None, root: str,
                    makes: dict[str, str], name: str) -> str:
    """The fold unit an image belongs to: a generator family or a real source."""
    if label == 1:
        key = family or generator or root_name(root)
        return FAKE_RENAMES.get(key, key)
    if name in makes:
        return makes[name]
    key = family or root_name(root)
    return REAL_RENAMES.get(key, REAL_RENAMES.get(root_name(root), key))


def cached_keys(cache_root: str | Path, model: JudgeConfig, spec: str) -> set[str]:
    """Content hashes of the images whose features for ``spec`` are in the cache."""
    directory = FeatureCache(cache_root, extractor_config(model, spec)).directory
    return {p.stem for p in directory.glob("*/*.safetensors")}


def load_feature_set(data: Sequence[str], cache_root: str | Path, model: JudgeConfig, spec: str,
                     require: set[str] | None = None) -> FeatureSet:
    """Every labelled image under ``data`` whose features for ``spec`` are in the cache
    (and, with ``require``, whose content hash is in it)."""
    cache = FeatureCache(cache_root, extractor_config(model, spec))
    feats, labels, sources, generators, skipped = [], [], [], [], 0
    keys = set(require) if require is not None else None
    for root in data:
        makes = camera_makes(root)
        for sample in gather_samples([root], HoldOut()):
            record = sample.record
            key = content_hash(record.path)
            entry = cache.get(key) if keys is None or key in keys else None
            if entry is None:
                skipped += 1
                continue
            feats.append(entry["features"].float())
            labels.append(record.label)
            sources.append(protocol_source(record.label, record.family, record.generator, root, makes,
                                           record.path.name))
            generators.append(record.generator or sources[-1])
    return FeatureSet(feats, np.array(labels), np.array(sources), np.array(generators), skipped)


@dataclass(frozen=True)
class Fold:
    """Held out: fakes whose source (or generator) is in ``fake``, reals of source ``real``."""

    fake: tuple[str, ...]
    real: str
    kind: str = "grid"

    def held_fake(self, data: FeatureSet) -> np.ndarray:
        return (data.labels == 1) & (np.isin(data.sources, self.fake) | np.isin(data.generators, self.fake))

    @property
    def name(self) -> str:
        return f"{'+'.join(self.fake)} | {self.real}"


def grid_folds(fakes: Sequence[str], reals: Sequence[str], kind: str = "grid") -> list[Fold]:
    return [Fold((f,), r, kind) for f in fakes for r in reals]


# A scorer maps a list of per-image view features to one score per image (higher = generated).
Scorer = Callable[[Sequence[torch.Tensor]], np.ndarray]
Trainer = Callable[[FeatureSet, np.ndarray], Scorer]


@dataclass
class FoldResult:
    fold: Fold
    caught: dict[str, float]  # "5%" / "1%" -> share of the held-out fakes caught
    by_generator: dict[str, dict[str, float]] = field(default_factory=dict)
    n_fake: int = 0
    n_real: int = 0


def run_fold(data: FeatureSet, fold: Fold, trainer: Trainer, train_mask: np.ndarray,
             fprs: Sequence[float] = (0.05, 0.01)) -> FoldResult:
    """Train without the fold's family and real source; threshold on that source; count catches."""
    fake = fold.held_fake(data)
    real = (data.labels == 0) & (data.sources == fold.real)
    scorer = trainer(data, train_mask & ~fake & ~real)
    fake_idx, real_idx = np.flatnonzero(fake), np.flatnonzero(real)
    scores = scorer([data.features[i] for i in np.concatenate([fake_idx, real_idx])])
    fake_scores, real_scores = scores[:len(fake_idx)], scores[len(fake_idx):]
    caught, by_gen = {}, {}
    gens = data.generators[fake_idx]
    for fpr in fprs:
        key = f"{round(fpr * 100)}%"
        hit = fake_scores >= threshold_for_fpr(real_scores, fpr)
        caught[key] = float(hit.mean())
        for gen in sorted(set(gens)):
            by_gen.setdefault(gen, {})[key] = float(hit[gens == gen].mean())
    return FoldResult(fold, caught, by_gen, len(fake_idx), len(real_idx))


def flagged_at_calibration(data: FeatureSet, trainer: Trainer, train_mask: np.ndarray, calibration: str,
                           checks: Sequence[str], fprs: Sequence[float] = (0.05, 0.01)) -> dict:
    """The shipped recipe's false positives: threshold on ``calibration``, each check source unseen.

    Per check source, a head trained without it and without the calibration source; the threshold
    flags 5% (1%) of the calibration photos, as the shipped threshold does; share of the check
    source flagged at it.
    """
    out = {}
    for check in checks:
        calib = (data.labels == 0) & (data.sources == calibration)
        held = (data.labels == 0) & (data.sources == check)
        scorer = trainer(data, train_mask & ~calib & ~held)
        calib_scores = scorer([data.features[i] for i in np.flatnonzero(calib)])
        held_scores = scorer([data.features[i] for i in np.flatnonzero(held)])
        out[check] = {f"{round(f * 100)}%": float((held_scores >= threshold_for_fpr(calib_scores, f)).mean())
                      for f in fprs}
        out[check]["n"] = int(held.sum())
    return out


def summarise(results: Sequence[FoldResult]) -> dict:
    """Mean and worst fold per FPR, means by held-out family and by real source, per generator."""
    out: dict = {"folds": len(results)}
    for key in results[0].caught if results else ():
        values = np.array([r.caught[key] for r in results])
        worst = results[int(values.argmin())].fold.name
        out[key] = {"mean": float(values.mean()), "worst": float(values.min()), "worst_fold": worst,
                    "folds_ge_90": int((values >= 0.9).sum())}
        for attr in ("fake", "real"):
            groups: dict[str, list[float]] = {}
            for r in results:
                name = "+".join(r.fold.fake) if attr == "fake" else r.fold.real
                groups.setdefault(name, []).append(r.caught[key])
            out[key][f"by_{attr}"] = {k: float(np.mean(v)) for k, v in groups.items()}
        gens: dict[str, list[float]] = {}
        for r in results:
            for gen, rates in r.by_generator.items():
                gens.setdefault(gen, []).append(rates[key])
        out[key]["by_generator"] = {k: float(np.mean(v)) for k, v in gens.items()}
    return out
