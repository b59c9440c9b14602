"""diffsleuth: tell real photos from images made by generative models."""

__version__ = "0.1.0"

from diffsleuth.detectors.base import Detector, Prediction  # noqa: E402
from diffsleuth.detectors.registry import load_detector  # noqa: E402

__all__ = ["Detector", "Prediction", "__version__", "load_detector"]
