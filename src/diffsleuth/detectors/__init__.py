"""Detector heads, their training recipes, and the registry that loads them by name.

Names are imported on first use (PEP 562), so a light submodule (``detectors.scanning``) does not
import torch through this package; only ``Detector`` (an ``nn.Module``) needs torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Detector": "diffsleuth.detectors.base",
    **dict.fromkeys(("DetectorConfig", "Prediction", "Predictor", "WeightsError"), "diffsleuth.detectors.predicting"),
    "JudgeRuntime": "diffsleuth.detectors.judge.runtime",
    **dict.fromkeys(("available_detectors", "detector_class", "load_detector", "register_detector"),
                    "diffsleuth.detectors.registry"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffsleuth.detectors' has no attribute {name!r}")


__all__ = sorted(_LAZY)
