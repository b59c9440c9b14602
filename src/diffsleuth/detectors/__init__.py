"""Detector heads, their training recipes, and the registry that loads them by name."""

from diffsleuth.detectors.base import Detector, DetectorConfig, Prediction, WeightsError
from diffsleuth.detectors.registry import (
    available_detectors,
    detector_class,
    load_detector,
    register_detector,
)

__all__ = [
    "Detector", "DetectorConfig", "Prediction", "WeightsError", "available_detectors",
    "detector_class", "load_detector", "register_detector",
]
