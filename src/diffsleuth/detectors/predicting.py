"""What every detector shares that needs no torch: the saved format's checks, configs, predictions.

The torch :class:`~diffsleuth.detectors.base.Detector` and the torch-free
:class:`~diffsleuth.detectors.judge.runtime.JudgeRuntime` both score through :class:`Predictor`,
so ``predict`` reads inputs, labels and builds :class:`Prediction` the same way whichever runtime
computes the scores. ``detectors.base`` re-exports every name here, so old imports keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffsleuth.backbones.pypi_weights import sha256_of as sha256_file
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.io.inputs import ImageInput, check_inputs, input_list, is_file_input, is_single, read_input
from diffsleuth.io.preprocess import PreprocessConfig
from diffsleuth.provenance import Provenance, read_provenance
from diffsleuth.settings import ConfigError, load_json
from diffsleuth.verdict import decide_detector_verdict, verdict_for

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GENERATED, REAL_LABEL = "generated", "real"


class WeightsError(ValueError):
    """Weights on disk are missing, tampered with, pickled, or do not fit the model."""


META_KEYS = {"detector": str, "config": dict, "weights_sha256": (str, type(None)), "calibration": dict,
             "metadata": dict}
"""The keys of a saved ``config.json`` and their JSON types; ``calibration`` (written by
``diffsleuth calibrate``) and ``metadata`` are records, not settings."""


def read_meta(path: Path) -> dict[str, Any]:
    """A saved detector's ``config.json``, checked: strict JSON, known keys of the right types.

    Raises :class:`ConfigError` naming the file and the key."""
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise ConfigError("", f"must be a JSON object, got {type(meta).__name__}", path)
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ConfigError("", f"unknown keys {unknown} (known: {sorted(META_KEYS)})", path)
    for key, kind in META_KEYS.items():
        if key in ("detector", "config") and key not in meta:
            raise ConfigError(key, "missing", path)
        if key in meta and not isinstance(meta[key], kind):
            raise ConfigError(key, f"has the wrong type ({type(meta[key]).__name__})", path)
    return meta


def read_safetensors_with(loader: Callable[[str], dict[str, Any]], path: Path,
                          expected_sha256: str | None = None) -> dict[str, Any]:
    """Load a safetensors file with ``loader`` (torch's or numpy's ``load_file``), refusing pickles
    and files that fail their checksum: one check for both runtimes."""
    from safetensors import SafetensorError

    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise WeightsError(
            f"{path}: SHA-256 does not match the one recorded in {CONFIG_NAME}; the weights were "
            "modified after saving (re-save with save_pretrained if that was intended)"
        )
    try:
        return loader(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        with path.open("rb") as handle:
            head = handle.read(2)
        if head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise WeightsError(
                f"{path}: this is a pickled (torch.save) file; diffsleuth only loads safetensors "
                "weights, because unpickling can run arbitrary code"
            ) from exc
        raise WeightsError(f"{path}: not a valid safetensors file ({exc})") from exc


def read_safetensors_numpy(path: Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """:func:`read_safetensors_with` numpy's loader: the torch-free runtime's weights."""
    from safetensors.numpy import load_file

    return read_safetensors_with(load_file, path, expected_sha256)


@dataclass
class Prediction:
    """Score of one image: ``score`` is the detector score in [0, 1] (higher: more like generated
    images; calibrated on validation data, not a chance a person can rely on); read
    :attr:`verdict` first.

    ``score_map`` (rows x cols, float32, each cell P(generated) of one region of the image as the
    detector read it, rows top to bottom) is set by detectors that score regions; else ``None``.
    A detector whose cells hold something else names it in ``Detector.score_map_label`` (LaRE²:
    relative latent reconstruction error).
    """

    score: float | None
    label: str | None
    extras: dict[str, Any] = field(default_factory=dict)
    score_map: np.ndarray | None = None
    provenance: Provenance | None = None
    """What the file's metadata says (:mod:`diffsleuth.provenance`), for path and bytes inputs; else None."""
    error: str | None = None
    """Why this input could not be read (then ``score`` and ``label`` are None), as a scan's error row."""
    threshold: float | None = None
    """The threshold ``label`` was decided at (None: ``label`` alone decides ``generated``)."""
    uncertain_threshold: float | None = None
    """Scores from here up to ``threshold`` are ``uncertain``; None when the detector has no band."""
    outside_domain: str | None = None
    """Why the detector cannot judge this input (too small, far from its training images), else None."""
    outside_overrides: bool = False
    """The domain check wins over a score at or above the threshold (e.g. a close-up face)."""

    @property
    def detector_verdict(self) -> str | None:
        """What the pixels say (:func:`diffsleuth.verdict.decide_detector_verdict`); None without a score."""
        threshold = self.threshold if self.threshold is not None else (
            float("-inf") if self.label == GENERATED else float("inf"))
        return decide_detector_verdict(self.score, threshold, self.uncertain_threshold, self.outside_domain is not None,
                                       self.outside_overrides)

    @property
    def verdict(self) -> str | None:
        """The headline (:func:`diffsleuth.verdict.compose_verdict`): a signed declaration, an unsigned
        claim, or :attr:`detector_verdict`."""
        return verdict_for(self.detector_verdict, self.provenance)


@dataclass
class DetectorConfig:
    """Fields every detector config has; subclasses add their own."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    threshold: float = field(default=0.5, metadata={"range": (0.0, 1.0)})


def uncertain_threshold(config: DetectorConfig, threshold: float) -> float | None:
    """The lower end of the config's ``uncertain`` band, or None: a detector without one has no band,
    and a threshold overridden below it leaves none."""
    low = getattr(config, "uncertain_threshold", None)
    return None if low is None or low >= threshold else float(low)


def check_threshold(threshold: float) -> float:
    """A decision threshold as a float in [0, 1]; anything else is a ValueError that says so."""
    try:
        value = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


class Predictor:
    """``predict`` over ``score_images``: the part of a detector's API that is the same in every runtime.

    A subclass has ``config`` (a :class:`DetectorConfig`) and ``score_images(images) -> (probs,
    extras)`` where ``probs`` is anything with ``tolist()`` (a CPU tensor, a numpy array); ``eval``
    and ``train`` (an ``nn.Module``'s, or no-ops) are switched around scoring.
    """

    config: DetectorConfig
    training: bool = False

    def score_images(self, images: Sequence[Image.Image]) -> tuple[Any, list[dict]]:
        raise NotImplementedError

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32,
                threshold: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                provenance: bool = True) -> list[Prediction]:
        """Score images; one :class:`Prediction` per image, in input order (batches internally).

        ``images`` is one image or a list of them, each a file path (str or PathLike), the bytes of
        an encoded file, a PIL image, or an HxWx3 uint8 RGB numpy array (an NxHxWx3 array is N
        images). Paths and bytes are decoded as ``diffsleuth scan`` decodes them (``max_pixels``
        guard, EXIF orientation, first frame, alpha dropped); PIL images of other modes (16-bit,
        float, palette) are converted as those files are. An input that cannot be read gets a
        Prediction with :attr:`Prediction.error` set and no score, as a scan gets an error row, and
        the others are still scored. A URL or an input of the wrong kind raises ValueError /
        TypeError before anything is scored. Always returns a list (``detector(x)`` returns one
        Prediction for one input).

        ``threshold`` labels at that value (0..1) instead of the stored ``config.threshold``;
        scores do not depend on it. For path and bytes inputs, ``provenance`` also reads the file's
        metadata into :attr:`Prediction.provenance` (and so :attr:`Prediction.verdict`).
        """
        threshold = self.config.threshold if threshold is None else check_threshold(threshold)
        items = input_list(images)
        check_inputs(items)
        read = [read_input(item, max_pixels, i) for i, item in enumerate(items)]
        found = [read_provenance(item) if provenance and is_file_input(item) else None for item in items]
        good = [i for i, item in enumerate(read) if isinstance(item, Image.Image)]
        out: list[Prediction] = [Prediction(score=None, label=None, error=item, provenance=found[i])
                                 for i, item in enumerate(read)]
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(good), batch_size):
                chunk = good[start:start + batch_size]
                probs, extras = self.score_images([read[i] for i in chunk])
                for i, p, extra in zip(chunk, probs.tolist(), extras):
                    score_map, outside = extra.pop("score_map", None), extra.pop("outside_domain", None)
                    overrides = bool(extra.pop("outside_overrides", False))
                    out[i] = Prediction(score=float(p), label=GENERATED if p >= threshold else REAL_LABEL,
                                        extras=extra, provenance=found[i], threshold=threshold,
                                        uncertain_threshold=uncertain_threshold(self.config, threshold),
                                        outside_domain=outside, outside_overrides=overrides,
                                        score_map=None if score_map is None else np.asarray(score_map, np.float32))
        finally:
            self.train(was_training)
        return out

    def predict_call(self, *args: Any, **kwargs: Any) -> Prediction | list[Prediction]:
        """``detector(images)``: one Prediction for one input, a list for a list."""
        predictions = self.predict(*args, **kwargs)
        return predictions[0] if is_single(args[0]) else predictions

    def eval(self) -> Predictor:
        return self

    def train(self, mode: bool = True) -> Predictor:
        return self
