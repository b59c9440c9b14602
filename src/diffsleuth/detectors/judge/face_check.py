"""Add the close-up-face check (:mod:`diffsleuth.detectors.judge.domain`) to a trained judge.

The default calls about half of real FFHQ faces ``generated``, more often than StyleGAN2 faces:
on close-up faces its verdict is not evidence, so such an image must read "outside the detector's
domain" whatever its score. This builds the check into a saved judge on a frozen encoder without
retraining its head: k-means centroids of a seeded half of the face images under ``--faces``
(both classes: a region, not a class; the other half stays out to measure the check on), and the
``max_face_margin`` that keeps ``--quantile`` of the calibration photos (``--calibration``, JPEG
q90 and q75 pooled, as the other domain limits) inside::

    python -m diffsleuth.detectors.judge.face_check src/diffsleuth/weights/default \\
        --faces ../shared/data/generalisation --calibration ../shared/data/imagenet-samples --cache DIR

``config.json`` records how, with the SHA-256 of every reference file (so an evaluation can
tell the faces that built the check from those that did not); ``model.safetensors`` gains
``domain_faces``. Features come from the training feature cache (``--cache``).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffsleuth.detectors.judge.domain import build_faces
from diffsleuth.detectors.judge.head_training import cached_features
from diffsleuth.detectors.judge.model import JudgeDetector
from diffsleuth.evaluation.heldout import HoldOut, Sample, gather_samples
from diffsleuth.features.cache import content_hash

FACE_FAMILIES = ("faces", "gan-faces")
DEGRADATIONS = ("jpeg:90", "jpeg:75")


def reference_half(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """A seeded half of each face family (by content hash, so the choice does not depend on paths)."""
    picked = []
    for family in FACE_FAMILIES:
        group = sorted((s for s in samples if s.record.family == family), key=lambda s: content_hash(s.record.path))
        order = np.random.default_rng(seed).permutation(len(group))
        picked += [group[i] for i in sorted(order[:len(group) // 2])]
    return picked


def add_face_check(model: JudgeDetector, faces: Sequence[Sample], calibration: Sequence[Sample], cache: Path,
                   k: int = 8, quantile: float = 0.99, seed: int = 0) -> None:
    """Set ``domain_faces`` and the ``domain`` config's face fields of ``model`` (which has a domain reference)."""
    domain = model.config.domain
    if domain is None or model.domain_centroids is None:
        raise ValueError("the face check compares with the training reference: this judge has no domain centroids")
    face_feats = cached_features(model, faces, DEGRADATIONS, cache, 16)
    calib_feats = cached_features(model, calibration, DEGRADATIONS, cache, 16)
    centroids, limit = build_faces([f for spec in DEGRADATIONS for f in face_feats[spec]],
                                   model.domain_centroids.numpy(), [f for spec in DEGRADATIONS for f in calib_feats[spec]],
                                   k, quantile, seed)
    domain.face_centroids, domain.max_face_margin = len(centroids), limit
    counts = Counter(f"{s.record.family} ({'generated' if s.record.label else 'real'})" for s in faces)
    domain.reference = {**(domain.reference or {}), "faces": {
        "images": len(faces), "images_by_family": dict(sorted(counts.items())), "degradations": list(DEGRADATIONS),
        "k": len(centroids), "seed": seed,
        "max_face_margin": f"keeps {quantile} of the calibration photos inside ({len(calibration)} images x "
                           f"{len(DEGRADATIONS)} degradations; mean over crops of (distance to the training reference) "
                           "- (distance to the face centroids))",
        "sha256": sorted(content_hash(s.record.path) for s in faces)}}
    model.domain_faces = torch.from_numpy(centroids)


def main() -> None:
    from diffsleuth.detectors.registry import load_detector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a saved judge-head detector folder (rewritten in place)")
    parser.add_argument("--faces", required=True, help="a data root whose manifest has families faces / gan-faces")
    parser.add_argument("--calibration", required=True, help="real photos never trained on (the threshold's)")
    parser.add_argument("--cache", type=Path, required=True, help="feature cache folder")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_detector(str(args.folder), runtime="torch")
    faces = reference_half(gather_samples([args.faces], HoldOut()), args.seed)
    if not faces:
        raise SystemExit(f"{args.faces}: no image of the families {', '.join(FACE_FAMILIES)}")
    calibration = [s for s in gather_samples([args.calibration], HoldOut()) if s.record.label == 0]
    add_face_check(model, faces, calibration, args.cache, args.k, args.quantile, args.seed)
    model.save_pretrained(args.folder)
    print(f"{args.folder}: face check from {len(faces)} faces, max_face_margin {model.config.domain.max_face_margin:.4f}")


if __name__ == "__main__":
    main()
