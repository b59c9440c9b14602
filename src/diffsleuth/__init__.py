"""diffsleuth: tell real photos from images made by generative models.

The public names are imported on first use (PEP 562), so ``import diffsleuth`` and the command
line's ``--help`` do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Detector": "diffsleuth.detectors.base",
    "Prediction": "diffsleuth.detectors.predicting",
    "load_detector": "diffsleuth.detectors.registry",
}

if TYPE_CHECKING:
    from diffsleuth.detectors.base import Detector
    from diffsleuth.detectors.predicting import Prediction
    from diffsleuth.detectors.registry import load_detector


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffsleuth' has no attribute {name!r}")


__all__ = ["Detector", "Prediction", "__version__", "load_detector"]
