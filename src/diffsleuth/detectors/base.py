"""The detector interface every method implements, and its safe on-disk format.

A saved detector is a folder with ``config.json`` (detector name, its config dataclass including
the preprocessing it was trained with, the decision threshold and the SHA-256 of the weights) and
``model.safetensors``. Weights are never unpickled: safetensors only, or, for foreign checkpoints,
``torch.load(weights_only=True)``. The torch-free parts (the format's checks, configs,
:class:`Prediction`, ``predict``) live in :mod:`diffsleuth.detectors.predicting` and are
re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from diffsleuth.backbones.pypi_weights import sha256_of as sha256_file
from diffsleuth.detectors.predicting import (  # noqa: F401  (re-exported: their old import path)
    CONFIG_NAME, GENERATED, META_KEYS, REAL_LABEL, WEIGHTS_NAME, DetectorConfig, Prediction, Predictor,
    WeightsError, check_threshold, read_meta, read_safetensors_with, uncertain_threshold)
from diffsleuth.devices import resolve_device
from diffsleuth.io.preprocess import geometry
from diffsleuth.io.preprocess_torch import preprocess_batch
from diffsleuth.settings import ConfigError, config_from_dict, config_to_dict


def read_safetensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load tensors from a safetensors file, refusing pickles and files that fail their checksum."""
    return read_safetensors_with(load_file, path, expected_sha256)


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


class Detector(nn.Module, Predictor):
    """Base class: subclasses set ``name``, ``config_class`` and implement ``forward``.

    ``forward`` takes a preprocessed batch and returns one logit of "generated" per image. Detectors
    whose input is not a plain image batch (LaRE², DNF) override :meth:`score_images`. Modules named
    in ``external_modules`` (frozen pretrained backbones referenced by id in the config) are not
    saved in ``model.safetensors``. ``extra_columns`` names the extras every prediction carries,
    so a scan can write its CSV header before the first image is scored. ``predict`` is
    :meth:`Predictor.predict`, shared with the torch-free runtime.
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``detector(images)``, the pipeline habit, is :meth:`predict` (one input gives one
        Prediction, a list a list); called with a tensor it is the module's ``forward``."""
        if not args or isinstance(args[0], torch.Tensor):
            return super().__call__(*args, **kwargs)
        return self.predict_call(*args, **kwargs)

    def trained_parameters(self) -> int:
        """Parameters the detector's own weights hold; a frozen backbone loaded from elsewhere
        (``external_modules``) is not counted."""
        skip = tuple(f"{m}." for m in self.external_modules)
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith(skip))

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

        model = load_detector(path_or_name, device=device, dtype=dtype, runtime="torch")
        if cls is not Detector and not isinstance(model, cls):
            raise WeightsError(f"{path_or_name}: holds a {model.name!r} detector, not {cls.name!r}")
        return model
