"""The judge's domain check: a low score on an input it cannot judge must not read as reassurance.

A detector trained on photographs and generated pictures says nothing reliable about a text
screenshot, a chart, pure noise or a 16-pixel thumbnail, yet it gives them a score. Three checks
decide "outside the detector's domain" for every score below the threshold (a score at or above it
stays ``generated``, see :mod:`diffsleuth.verdict`):

- size: a shorter side under ``min_short_side`` pixels (the encoder would upsample it several
  times; the model never saw such images);
- distance: the crops' mean cosine distance, in the frozen encoder's own embedding space, to the
  nearest of ``centroids`` k-means centroids of training-image embeddings (both classes) is over
  ``max_distance``;
- photo margin: the crops' mean of (distance to the nearest of ``outside_centroids`` centroids of
  rendered non-photos and noise) minus (distance to the training reference) is under
  ``min_margin``: the image looks more like a text page, chart, screenshot or noise than like
  anything the detector trained on. Distance alone misses these (CLIP places a chart or uniform
  noise about as far from the training photos as an unusual web photo).

A fourth check is of another kind: **close-up faces** (``face_centroids``, centroids of aligned
face crops of both classes: a region, not a class). On them the default's scores rank real faces
above generated ones, so there a ``generated`` verdict is not evidence either: an image whose
crops are nearer to the face centroids than to the training reference by more than
``max_face_margin`` is outside the domain *whatever its score* (``outside_overrides``).

The centroids are stored in ``model.safetensors`` (buffers ``domain_centroids``,
``domain_outside`` and ``domain_faces``); ``max_distance`` and ``min_margin`` are quantiles over real photos that are
in neither reference and are not used to check the result (:func:`build_reference`). The
functions on tensors import torch when called; :func:`nearest_distances` is the numpy form the
torch-free runtime checks with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the torch forms below import it when called; the runtime's check is numpy
    import torch


@dataclass
class DomainConfig:
    """The domain check of a judge (see the module docstring); ``reference`` records how it was built."""

    min_short_side: int = field(default=128, metadata={"range": (1, 100_000)})
    centroids: int = field(default=0, metadata={"range": (0, 4096)})
    """k-means centroids in ``model.safetensors``; 0 checks the size only."""
    max_distance: float = field(default=2.0, metadata={"range": (0.0, 2.0)})
    outside_centroids: int = field(default=0, metadata={"range": (0, 4096)})
    """Centroids of non-photo embeddings (0: no photo-margin check)."""
    min_margin: float = field(default=-2.0, metadata={"range": (-2.0, 2.0)})
    face_centroids: int = field(default=0, metadata={"range": (0, 4096)})
    """Centroids of close-up faces (0: no face check); needs ``centroids``."""
    max_face_margin: float = field(default=2.0, metadata={"range": (-2.0, 2.0)})
    reference: dict | None = None  # how the centroids and thresholds were made; never read to score


def kmeans_centroids(embeddings: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Spherical k-means (cosine) of ``embeddings`` (N, d) -> (k, d) unit centroids, seeded
    (k-means++ initialisation), so the same embeddings always give the same reference."""
    units = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    k = min(k, len(units))
    rng = np.random.default_rng(seed)
    centres = [units[rng.integers(len(units))]]
    for _ in range(1, k):
        dist = 1.0 - np.max(units @ np.stack(centres).T, axis=1)
        weights = np.clip(dist, 0, None) ** 2
        centres.append(units[rng.choice(len(units), p=weights / weights.sum())] if weights.sum() > 0
                       else units[rng.integers(len(units))])
    centres = np.stack(centres)
    for _ in range(iterations):
        nearest = np.argmax(units @ centres.T, axis=1)
        moved = np.stack([units[nearest == j].sum(0) if np.any(nearest == j) else centres[j] for j in range(k)])
        moved /= np.linalg.norm(moved, axis=1, keepdims=True).clip(1e-12)
        if np.allclose(moved, centres):
            break
        centres = moved
    return centres.astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as ``F.normalize`` does (float32, norms floored at 1e-12)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def nearest_distances(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """:func:`nearest_distance` in numpy (the torch-free runtime's domain check) -> (B,) float32."""
    return np.float32(1.0) - (unit_rows(features) @ unit_rows(centroids).T).max(1)


def nearest_distance(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cosine distance of each feature (B, d) to its nearest centroid (k, d) -> (B,)."""
    import torch.nn.functional as F

    sims = F.normalize(features.float(), dim=1) @ F.normalize(centroids.float(), dim=1).T
    return 1.0 - sims.max(1).values


def image_distances(crop_features: list[torch.Tensor], centroids: torch.Tensor) -> np.ndarray:
    """Per image, the mean nearest-centroid distance of its crops (what the judge compares)."""
    return np.array([float(nearest_distance(f, centroids).mean()) for f in crop_features])


def image_margins(crop_features: list[torch.Tensor], centroids: torch.Tensor, outside: torch.Tensor) -> np.ndarray:
    """Per image, the mean over its crops of (distance to ``outside``) - (distance to ``centroids``)."""
    return np.array([float((nearest_distance(f, outside) - nearest_distance(f, centroids)).mean())
                     for f in crop_features])


def outside_reason(size: tuple[int, int], distance: float | None, config: DomainConfig,
                   margin: float | None = None) -> str | None:
    """Why an image of ``size`` (w, h) at ``distance`` (and photo ``margin``) is outside the
    domain, or None when it is inside."""
    if min(size) < config.min_short_side:
        return f"too small ({size[0]}x{size[1]} px; the shorter side is under {config.min_short_side})"
    if distance is not None and distance > config.max_distance:
        return f"unlike its training images (embedding distance {distance:.3f} > {config.max_distance:.3f})"
    if margin is not None and margin < config.min_margin:
        return (f"not photo-like (closer to text, charts, screenshots or noise: margin {margin:.3f} "
                f"< {config.min_margin:.3f})")
    return None


def face_reason(face_margin: float | None, config: DomainConfig) -> str | None:
    """Why an image whose crops are ``face_margin`` nearer to close-up faces than to the training
    reference cannot be judged, whatever its score; None when it can (or there is no face check)."""
    if face_margin is None or face_margin <= config.max_face_margin:
        return None
    return (f"a close-up face (face margin {face_margin:.3f} > {config.max_face_margin:.3f}): on such faces "
            "this detector calls real photos generated as often as generated ones")


def domain_verdict(size: tuple[int, int], distance: float | None, margin: float | None, face: float | None,
                   domain: DomainConfig) -> dict:
    """``outside_domain`` (why, or None) and, for a close-up face, ``outside_overrides``."""
    reason = face_reason(face, domain)
    if reason is not None:
        return {"outside_domain": reason, "outside_overrides": True}
    return {"outside_domain": outside_reason(size, distance, domain, margin)}


def build_reference(reference: list[torch.Tensor], held_out: list[torch.Tensor], k: int, quantile: float,
                    seed: int = 0) -> tuple[np.ndarray, float]:
    """Centroids of the ``reference`` crops' encoder features (one tensor per image) and the
    ``max_distance`` that passes ``quantile`` of the ``held_out`` images (real photos never in
    the reference)."""
    import torch

    centroids = kmeans_centroids(torch.cat(reference).numpy(), k, seed)
    distances = image_distances(held_out, torch.from_numpy(centroids))
    return centroids, float(np.quantile(distances, quantile))


def build_outside(outside: list[torch.Tensor], centroids: np.ndarray, held_out: list[torch.Tensor], k: int,
                  quantile: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """Centroids of non-photo crops' features and the ``min_margin`` that passes ``quantile`` of
    the ``held_out`` real photos."""
    import torch

    outside_centroids = kmeans_centroids(torch.cat(outside).numpy(), k, seed)
    margins = image_margins(held_out, torch.from_numpy(centroids), torch.from_numpy(outside_centroids))
    return outside_centroids, float(np.quantile(margins, 1.0 - quantile))


def build_faces(faces: list[torch.Tensor], centroids: np.ndarray, held_out: list[torch.Tensor], k: int,
                quantile: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """Centroids of close-up face crops (both classes) and the ``max_face_margin`` that keeps
    ``quantile`` of the ``held_out`` real photos inside the domain: :func:`build_outside` with the
    faces as the other reference, its margin turned round (nearer the faces = larger)."""
    face_centroids, min_margin = build_outside(faces, centroids, held_out, k, quantile, seed)
    return face_centroids, -min_margin
