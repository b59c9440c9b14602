"""A judge scored without torch: numpy and onnxruntime, what the base install runs.

:class:`JudgeRuntime` reads the same saved folder as the torch
:class:`~diffsleuth.detectors.judge.model.JudgeDetector` (``config.json`` validated the same way,
``model.safetensors`` checked against its SHA-256 and a strict key set) and scores the same crops
the same way: encoder -> projection MLP -> unit embedding -> nearest natural trace -> logistic
calibration, plus the domain check. Only a frozen encoder can run here (``onnx``: the pinned INT8
graph, one image per call; ``clip-vit-b16``: :mod:`diffsleuth.backbones.clip_runtime`); the
encoders that are trained with the judge (``cnn``, ``resnet50``) and open_clip need torch. Scores
equal the torch judge's within 1e-5 on the same encoder outputs (``tests/test_torch_free.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from diffsleuth.detectors.judge.config import JudgeConfig, JudgeCrops
from diffsleuth.detectors.judge.domain import domain_verdict, nearest_distances, unit_rows
from diffsleuth.detectors.predicting import (CONFIG_NAME, WEIGHTS_NAME, Predictor, WeightsError, read_meta,
                                             read_safetensors_numpy)
from diffsleuth.devices import cpu_threads
from diffsleuth.io.preprocess import normalize_array, to_array
from diffsleuth.settings import ConfigError, config_from_dict

RUNTIME_ENCODERS = ("onnx", "clip-vit-b16")


class ArrayEncoder(Protocol):
    """What the runtime needs of an encoder: ``encode`` (N, 3, H, W) float32 -> (N, out_dim) float32."""

    out_dim: int

    def encode(self, batch: np.ndarray) -> np.ndarray: ...


def load_array_encoder(config: JudgeConfig, threads: int | None = None, precision: str = "fp32") -> ArrayEncoder:
    """The judge's frozen encoder as a numpy encoder (imported lazily: only the one configured)."""
    threads = threads if threads is not None else cpu_threads()
    if config.encoder == "clip-vit-b16":
        from diffsleuth.backbones.clip_runtime import load_clip_encoder

        return load_clip_encoder(config.backbone, config.backbone_sha256, precision=precision, threads=threads)
    if config.encoder == "onnx":
        from diffsleuth.backbones.onnx_encoder import load_onnx_array_encoder

        return load_onnx_array_encoder(config.backbone, config.backbone_sha256, threads=threads)
    raise ValueError(f"the torch-free runtime cannot run the judge encoder {config.encoder!r} "
                     f"(it runs {', '.join(RUNTIME_ENCODERS)}); load it with runtime 'torch'")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-np.asarray(x, np.float32)))).astype(np.float32)


def expected_shapes(config: JudgeConfig, dim: int) -> dict[str, tuple[int, ...]]:
    """Every tensor a judge with a frozen encoder of width ``dim`` saves, and its shape."""
    shapes = {"projection.0.weight": (config.proj_hidden, dim), "projection.0.bias": (config.proj_hidden,),
              "projection.2.weight": (config.embed_dim, config.proj_hidden), "projection.2.bias": (config.embed_dim,),
              "traces": (config.num_traces, config.embed_dim)}
    domain = config.domain
    if domain is not None and domain.centroids:
        shapes["domain_centroids"] = (domain.centroids, dim)
        if domain.outside_centroids:
            shapes["domain_outside"] = (domain.outside_centroids, dim)
        if domain.face_centroids:
            shapes["domain_faces"] = (domain.face_centroids, dim)
    return shapes


class JudgeRuntime(JudgeCrops, Predictor):
    """A judge with a frozen encoder, scored with numpy and onnxruntime (no torch).

    The surface a scan, ``predict``, the server and the CLI use is the torch detector's: ``name``,
    ``config``, ``extra_columns``, ``score_map_label``, ``reduce_input``, ``views``,
    ``score_images`` (numpy probabilities), ``predict`` and ``detector(images)``.
    """

    name: ClassVar[str] = "judge"
    config_class: ClassVar[type[JudgeConfig]] = JudgeConfig
    score_map_label: ClassVar[str] = "P(generated)"
    runtime: ClassVar[str] = "onnx"
    device = "cpu"

    def __init__(self, config: JudgeConfig, weights: dict[str, np.ndarray], encoder: ArrayEncoder,
                 source: str = WEIGHTS_NAME) -> None:
        if config.encoder not in RUNTIME_ENCODERS or config.front_end != "none":
            raise ValueError(f"the torch-free runtime scores a judge with a frozen {' or '.join(RUNTIME_ENCODERS)} "
                             f"encoder and no front end, not encoder {config.encoder!r} with front end "
                             f"{config.front_end!r}; load it with runtime 'torch'")
        self.config = config
        self.encoder = encoder
        shapes = expected_shapes(config, int(encoder.out_dim))
        missing = sorted(set(shapes) - set(weights))
        unexpected = sorted(set(weights) - set(shapes))
        wrong = [f"{k} {tuple(weights[k].shape)} (expected {shapes[k]})" for k in sorted(set(shapes) & set(weights))
                 if tuple(weights[k].shape) != shapes[k]]
        if missing or unexpected or wrong:
            raise WeightsError(f"{source}: weights do not fit detector {self.name!r} "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})")
        w = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
        self.w1, self.b1, self.w2, self.b2 = (w[k] for k in ("projection.0.weight", "projection.0.bias",
                                                             "projection.2.weight", "projection.2.bias"))
        self.traces = w["traces"]
        self.unit_traces = unit_rows(self.traces)
        self.domain_centroids = w.get("domain_centroids")
        self.domain_outside = w.get("domain_outside")
        self.domain_faces = w.get("domain_faces")
        columns: tuple[str, ...] = ("trace_similarity",)
        if self.domain_centroids is not None:
            columns += ("domain_distance", *(("photo_margin",) if self.domain_outside is not None else ()),
                        *(("face_margin",) if self.domain_faces is not None else ()))
        self.extra_columns = columns

    @classmethod
    def from_folder(cls, directory: str | os.PathLike, threads: int | None = None, precision: str = "fp32",
                    config_overrides: dict[str, Any] | None = None) -> JudgeRuntime:
        """Load a saved judge folder (see :meth:`Detector.from_folder`, whose checks this repeats)."""
        directory = Path(directory)
        source = directory / CONFIG_NAME
        meta = read_meta(source)
        if meta["detector"] != cls.name:
            raise ConfigError("detector", f"the torch-free runtime scores a 'judge', not {meta['detector']!r}", source)
        data = dict(meta["config"])
        data.update(config_overrides or {})
        try:
            config = config_from_dict(JudgeConfig, data)
        except ConfigError as exc:
            raise exc.located(source, "config") from exc
        weights = read_safetensors_numpy(directory / WEIGHTS_NAME, meta.get("weights_sha256"))
        try:
            encoder = load_array_encoder(config, threads, precision)
        except (ValueError, TypeError, RuntimeError) as exc:
            if type(exc).__module__.startswith("diffsleuth."):
                raise  # the project's own typed errors (weights unavailable, ...) already say why
            raise ConfigError("config", f"cannot build a 'judge' runtime from it ({exc})", source) from exc
        return cls(config, weights, encoder, source=str(directory / WEIGHTS_NAME))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``detector(images)`` is :meth:`predict` (one input gives one Prediction, a list a list)."""
        return self.predict_call(*args, **kwargs)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Encoder outputs (B, encoder dim) -> unit embeddings (projection MLP, then unit length)."""
        hidden = np.maximum(features @ self.w1.T + self.b1, np.float32(0.0))
        return unit_rows(hidden @ self.w2.T + self.b2)

    def calibrate(self, score: np.ndarray) -> np.ndarray:
        """Trace score -> logit of "generated" with the fitted logistic calibration."""
        return (np.float32(self.config.calibration_slope) * np.asarray(score, np.float32)
                + np.float32(self.config.calibration_intercept))

    def encode_crops(self, crops: list[Image.Image]) -> np.ndarray:
        """Crops (already at the encoder's size) -> encoder features (N, out_dim) float32."""
        batch = normalize_array(np.stack([to_array(c) for c in crops]), self.config.preprocess)
        return np.asarray(self.encoder.encode(batch), np.float32)

    def score_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[dict]]:
        """P(generated) from the mean trace similarity of each image's crops; see :meth:`score_features`."""
        shapes: list[tuple[int, int]] = []
        features = [self.encode_crops(chunk) for chunk in self.crop_chunks(images, shapes)]
        counts = np.cumsum([rows * cols for rows, cols in shapes])[:-1]
        per_image = np.split(np.concatenate(features), counts)
        return self.score_features(per_image, [image.size for image in images], shapes)

    def score_features(self, features: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
                       shapes: Sequence[tuple[int, int]] | None = None) -> tuple[np.ndarray, list[dict]]:
        """Scores from each image's crop features, as :meth:`JudgeDetector.score_features` gives them."""
        probs, extras = [], []
        for index, (feats, size) in enumerate(zip(features, sizes)):
            feats = np.asarray(feats, np.float32)
            sims = (self.embed_features(feats) @ self.unit_traces.T).max(1)
            mean = sims.mean(dtype=np.float32)
            probs.append(sigmoid(self.calibrate(mean)))
            extra: dict = {"trace_similarity": round(float(mean), 6)}
            distance = margin = face = None
            if self.domain_centroids is not None:
                near = nearest_distances(feats, self.domain_centroids)
                distance = float(near.mean(dtype=np.float32))
                extra["domain_distance"] = round(distance, 6)
                if self.domain_outside is not None:
                    margin = float((nearest_distances(feats, self.domain_outside) - near).mean(dtype=np.float32))
                    extra["photo_margin"] = round(margin, 6)
                if self.domain_faces is not None:
                    face = float((near - nearest_distances(feats, self.domain_faces)).mean(dtype=np.float32))
                    extra["face_margin"] = round(face, 6)
            if self.config.domain is not None:
                extra.update(domain_verdict(size, distance, margin, face, self.config.domain))
            rows, cols = shapes[index] if shapes is not None else (1, len(sims))
            if self.config.grid == "cover" or rows * cols > 1:  # one centre crop maps nothing
                extra["score_map"] = sigmoid(self.calibrate(sims)).reshape(rows, cols)
            extras.append(extra)
        return np.asarray(probs, np.float32).reshape(-1), extras
