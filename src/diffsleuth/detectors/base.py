"""The detector interface every method implements, and its safe on-disk format.

A saved detector is a folder with ``config.json`` (detector name, its config dataclass including
the preprocessing it was trained with, the decision threshold and the SHA-256 of the weights) and
``model.safetensors``. Weights are never unpickled: safetensors only, or, for foreign checkpoints,
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffsleuth.backbones.pypi_weights import sha256_of as sha256_file
from diffsleuth.settings import ConfigError, config_from_dict, config_to_dict, load_json
from diffsleuth.devices import resolve_device
from diffsleuth.io.preprocess import PreprocessConfig, geometry, preprocess_batch
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.io.inputs import ImageInput, check_inputs, input_list, is_file_input, is_single, read_input
from diffsleuth.provenance import Provenance, read_provenance
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

    @property
    def detector_verdict(self) -> str | None:
        """What the pixels say (:func:`diffsleuth.verdict.decide_detector_verdict`); None without a score."""
        threshold = self.threshold if self.threshold is not None else (
            float("-inf") if self.label == GENERATED else float("inf"))
        return decide_detector_verdict(self.score, threshold, self.uncertain_threshold, self.outside_domain is not None)

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




def read_safetensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load tensors from a safetensors file, refusing pickles and files that fail their checksum."""
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise WeightsError(
            f"{path}: SHA-256 does not match the one recorded in {CONFIG_NAME}; the weights were "
            "modified after saving (re-save with save_pretrained if that was intended)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        with path.open("rb") as handle:
            head = handle.read(2)
        if head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise WeightsError(
                f"{path}: this is a pickled (torch.save) file; diffsleuth only loads safetensors "
                "weights, because unpickling can run arbitrary code"
            ) from exc
        raise WeightsError(f"{path}: not a valid safetensors file ({exc})") from exc


def load_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a foreign ``.pt``/``.pth``/``.bin`` state dict without unpickling arbitrary objects."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and others for unsafe content
        raise WeightsError(f"{path}: refused to load ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a flat state dict of tensors")
    return state


class Detector(nn.Module):
    """Base class: subclasses set ``name``, ``config_class`` and implement ``forward``.

    ``forward`` takes a preprocessed batch and returns one logit of "generated" per image. Detectors
    whose input is not a plain image batch (LaRE², DNF) override :meth:`score_images`. Modules named
    in ``external_modules`` (frozen pretrained backbones referenced by id in the config) are not
    saved in ``model.safetensors``. ``extra_columns`` names the extras every prediction carries,
    so a scan can write its CSV header before the first image is scored.
    """

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig
    external_modules: ClassVar[tuple[str, ...]] = ()
    extra_columns: ClassVar[tuple[str, ...]] = ()
    score_map_label: ClassVar[str] = "P(generated)"  # what a score_map cell holds (overlay colour bar)

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return preprocess_batch(list(images), self.config.preprocess)

    def reduce_input(self, image: Image.Image) -> Image.Image:
        """The smallest image that this detector scores exactly as it scores ``image``.

        A scan applies it right after decoding, so a batch waiting for the model holds model-sized
        images, not whole photos. Default: the preprocessing geometry (idempotent) when the detector
        scores through :meth:`preprocess`, else the image unchanged.
        """
        if type(self).score_images is Detector.score_images and type(self).preprocess is Detector.preprocess:
            return geometry(image, self.config.preprocess)
        return image

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[dict]]:
        """Return P(generated) for each image (float32, CPU) and per-image extras.

        An extra named ``score_map`` (a 2-D array) becomes :attr:`Prediction.score_map`, one named
        ``outside_domain`` (why the input cannot be judged) :attr:`Prediction.outside_domain`."""
        batch = self.preprocess(images).to(self.device, self.dtype)
        logits = self(batch).float().reshape(-1)
        return torch.sigmoid(logits).cpu(), [{} for _ in images]

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
                    out[i] = Prediction(score=float(p), label=GENERATED if p >= threshold else REAL_LABEL,
                                        extras=extra, provenance=found[i], threshold=threshold,
                                        uncertain_threshold=uncertain_threshold(self.config, threshold),
                                        outside_domain=outside,
                                        score_map=None if score_map is None else np.asarray(score_map, np.float32))
        finally:
            self.train(was_training)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``detector(images)``, the pipeline habit, is :meth:`predict` (one input gives one
        Prediction, a list a list); called with a tensor it is the module's ``forward``."""
        if not args or isinstance(args[0], torch.Tensor):
            return super().__call__(*args, **kwargs)
        predictions = self.predict(*args, **kwargs)
        return predictions[0] if is_single(args[0]) else predictions

    def weights_state_dict(self) -> dict[str, torch.Tensor]:
        skip = tuple(f"{m}." for m in self.external_modules)
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith(skip)}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically) and return the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / WEIGHTS_NAME
        tmp = directory / f".{WEIGHTS_NAME}.tmp"
        state = self.weights_state_dict()
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, weights)
        meta = {
            "detector": self.name,
            "config": config_to_dict(self.config),
            "weights_sha256": sha256_file(weights),
        }
        tmp_cfg = directory / f".{CONFIG_NAME}.tmp"
        tmp_cfg.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_cfg, directory / CONFIG_NAME)
        return directory

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a state dict strictly, except for the external backbone modules."""
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise WeightsError(f"{source}: weights do not fit detector {self.name!r} ({exc})") from exc
        skip = tuple(f"{m}." for m in self.external_modules)
        missing = [k for k in missing if not k.startswith(skip)]
        if missing or unexpected:
            raise WeightsError(
                f"{source}: weights do not fit detector {self.name!r} "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )

    @classmethod
    def from_config(cls, config: DetectorConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, pretrained: bool = True) -> Detector:
        """Build a detector; subclasses load their external backbones here.

        ``pretrained=False`` builds the saved parts as architecture only (their weights are about
        to come from ``model.safetensors``), so restoring never fetches pretrained weights.
        """
        model = cls(config)
        return model.to(resolve_device(device), dtype=dtype)

    @classmethod
    def from_folder(cls, directory: Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None,
                    config_overrides: dict[str, Any] | None = None) -> Detector:
        source = directory / CONFIG_NAME
        meta = read_meta(source)
        data = dict(meta["config"])
        data.update(config_overrides or {})
        try:
            config = config_from_dict(cls.config_class, data)
        except ConfigError as exc:
            raise exc.located(source, "config") from exc
        state = read_safetensors(directory / WEIGHTS_NAME, meta.get("weights_sha256"))
        try:
            model = cls.from_config(config, device="cpu", pretrained=False)
        except (ValueError, TypeError, RuntimeError) as exc:
            if type(exc).__module__.startswith("diffsleuth."):
                raise  # the project's own typed errors (weights unavailable, ...) already say why
            raise ConfigError("config", f"cannot build a {cls.name!r} detector from it ({exc})", source) from exc
        model.load_weights(state, str(directory / WEIGHTS_NAME))
        return model.to(resolve_device(device), dtype=dtype).eval()

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike | None = None,
                        device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> Detector:
        """Load a saved folder or a shipped model name; see :func:`load_detector`."""
        from diffsleuth.detectors.registry import load_detector

        model = load_detector(path_or_name, device=device, dtype=dtype)
        if cls is not Detector and not isinstance(model, cls):
            raise WeightsError(f"{path_or_name}: holds a {model.name!r} detector, not {cls.name!r}")
        return model
