"""Detectors by name: built-in classes load lazily, shipped weights resolve by name."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffsleuth.detectors.base import CONFIG_NAME, Detector, WeightsError, check_threshold, read_meta
from diffsleuth.settings import ConfigError
from diffsleuth.registry import LazyRegistry

_DETECTORS: LazyRegistry[type[Detector]] = LazyRegistry("detector", {
    "judge": "diffsleuth.detectors.judge.model",
    "lare2": "diffsleuth.detectors.lare2.model",
    "dnf": "diffsleuth.detectors.dnf.model",
    "dire": "diffsleuth.detectors.dnf.model",
})
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# "judge-compact": the 375k-parameter from-scratch judge, kept by name when the default changes.
SHIPPED = {"default": WEIGHTS_DIR / "default", "judge-compact": WEIGHTS_DIR / "judge-compact"}
DEFAULT_DETECTOR = "default"


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` loadable by its ``name``."""
    return _DETECTORS.register(cls.name, cls)


def detector_class(name: str) -> type[Detector]:
    return _DETECTORS.get(name)


def available_detectors() -> list[str]:
    return _DETECTORS.names()


def resolve_detector_path(path_or_name: str | os.PathLike | None) -> Path:
    """A folder with ``config.json``, or the folder of a shipped model name."""
    key = DEFAULT_DETECTOR if path_or_name is None else str(path_or_name)
    if key in SHIPPED:
        folder = SHIPPED[key]
        if not (folder / CONFIG_NAME).is_file():
            raise WeightsError(f"shipped detector {key!r} is missing from this install ({folder})")
        return folder
    folder = Path(key)
    if folder.is_dir() and (folder / CONFIG_NAME).is_file():
        return folder
    if folder.is_dir():
        raise WeightsError(f"{folder}: no {CONFIG_NAME}; is this a detector saved with save_pretrained?")
    if key in _DETECTORS:
        raise WeightsError(
            f"detector {key!r} has no shipped weights: train one (`diffsleuth train {key} ...`) "
            "and pass the output folder"
        )
    raise WeightsError(
        f"{key!r} is neither a detector folder nor a shipped model "
        f"(shipped: {', '.join(SHIPPED)}; trainable: {', '.join(available_detectors())})"
    )


def load_detector(path_or_name: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None, threshold: float | None = None) -> Detector:
    """Load a detector from a saved folder or a shipped name; ``None`` gives the default detector.

    ``threshold`` (0..1) replaces the stored decision threshold for this loaded copy.
    """
    if threshold is not None:
        threshold = check_threshold(threshold)
    folder = resolve_detector_path(path_or_name)
    name = read_meta(folder / CONFIG_NAME)["detector"]
    if name not in _DETECTORS:
        raise ConfigError("detector", f"unknown detector {name!r} (known: {', '.join(available_detectors())})",
                          folder / CONFIG_NAME)
    model = detector_class(name).from_folder(folder, device=device, dtype=dtype)
    if threshold is not None:
        model.config.threshold = threshold
    return model
