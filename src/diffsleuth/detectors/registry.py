"""Detectors by name: built-in classes load lazily, shipped weights resolve by name.

Importing this module does not import torch: :func:`load_detector` scores a judge with a frozen
ONNX or CLIP encoder on the CPU with the torch-free :class:`~diffsleuth.detectors.judge.runtime.JudgeRuntime`
and imports torch only for the detectors, devices and precisions that need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffsleuth.detectors.predicting import CONFIG_NAME, WeightsError, check_threshold, read_meta
from diffsleuth.devices import apply_torch_threads, needs_torch, set_cpu_threads
from diffsleuth.extras import require_torch
from diffsleuth.registry import LazyRegistry
from diffsleuth.settings import ConfigError

if TYPE_CHECKING:
    import torch

    from diffsleuth.detectors.base import Detector
    from diffsleuth.detectors.judge.runtime import JudgeRuntime

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


RUNTIMES = ("auto", "onnx", "torch")
"""``auto``: the torch-free runtime where it can score the detector (a judge with a frozen ``onnx``
or ``clip-vit-b16`` encoder, on the CPU in fp32), torch otherwise; ``onnx`` / ``torch`` force one."""


def check_scoring_choice(precision: str, runtime: str, off_cpu: str | None, cpu_option: str) -> None:
    """Refuse, before any model loads, a precision and runtime that cannot score together: INT8 and
    the onnx runtime run on the CPU in onnxruntime only. ``off_cpu`` names the option that moves
    scoring off the CPU (``--device cuda``, ``--gpus-per-actor 1``), None on the CPU; ``cpu_option``
    is the one that keeps it there, for the message."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    text = precision.strip().lower()
    if text == "int8" and (runtime == "torch" or off_cpu):
        raise ValueError(f"--precision int8 runs the default judge's encoder in onnxruntime on the CPU, not with "
                         f"{off_cpu or '--runtime torch'}: use it with {cpu_option} and --runtime auto or onnx")
    if runtime == "onnx" and (off_cpu or text not in ("auto", "fp32", "int8")):
        raise ValueError(f"--runtime onnx scores on the CPU in fp32 (or int8) only, not with "
                         f"{off_cpu or f'--precision {precision}'}; use --runtime auto or torch")


def load_detector(path_or_name: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None, threshold: float | None = None,
                  runtime: str = "auto", threads: int | None = None,
                  encoder_precision: str = "fp32") -> Detector | JudgeRuntime:
    """Load a detector from a saved folder or a shipped name; ``None`` gives the default detector.

    ``threshold`` (0..1) replaces the stored decision threshold for this loaded copy. ``runtime``
    is one of :data:`RUNTIMES`; the torch-free runtime gives the same scores (within 1e-5) without
    importing torch. ``threads`` sets the CPU threads of onnxruntime (and torch's, for a torch
    model). ``encoder_precision`` ``int8`` runs a CLIP judge's encoder block-wise INT8 in the
    torch-free runtime (faster on CPUs with AVX-512 only; see :mod:`diffsleuth.backbones.clip_runtime` for how far its
    scores move). A torch detector without torch installed is a :class:`~diffsleuth.extras.MissingExtraError`
    naming the extra to install.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if threshold is not None:
        threshold = check_threshold(threshold)
    if threads is not None:
        set_cpu_threads(threads)
    folder = resolve_detector_path(path_or_name)
    meta = read_meta(folder / CONFIG_NAME)
    name = meta["detector"]
    if name not in _DETECTORS:
        raise ConfigError("detector", f"unknown detector {name!r} (known: {', '.join(available_detectors())})",
                          folder / CONFIG_NAME)
    why_not = runtime_unsupported(name, meta["config"])
    torch_device = needs_torch(device, dtype) if runtime != "torch" else True
    if runtime == "onnx" and (why_not or torch_device):
        raise ValueError(f"the onnx runtime cannot score {folder}: "
                         f"{why_not or f'it runs on the CPU in fp32 only (device {device}, dtype {dtype})'}; "
                         "use runtime 'torch' (pip install 'diffsleuth[gpu]') or 'auto'")
    if encoder_precision != "fp32" and (why_not or torch_device):
        raise ValueError(f"encoder precision {encoder_precision!r} is one of the torch-free runtime's, on the CPU: "
                         f"{folder} {why_not or 'is to be scored with torch here'}")
    if not why_not and not torch_device:
        from diffsleuth.detectors.judge.runtime import JudgeRuntime

        model: Any = JudgeRuntime.from_folder(folder, precision=encoder_precision)
    else:
        purpose = (f"scoring on {device}" if torch_device and runtime != "torch" else
                   f"the {name!r} detector in {folder.name}" + (f" ({why_not})" if why_not else ""))
        require_torch(purpose)
        apply_torch_threads()
        model = detector_class(name).from_folder(folder, device=device, dtype=dtype)
    if threshold is not None:
        model.config.threshold = threshold
    return model


def runtime_unsupported(name: str, config: dict) -> str | None:
    """Why the torch-free runtime cannot score a saved detector (its ``config.json`` ``config``),
    or None when it can."""
    from diffsleuth.detectors.judge.runtime import RUNTIME_ENCODERS

    if name != "judge":
        return f"detector {name!r} scores with torch"
    encoder = config.get("encoder", "cnn")
    if encoder not in RUNTIME_ENCODERS:
        return f"its {encoder!r} encoder runs in torch"
    if config.get("front_end") not in (None, "none"):
        return f"its {config.get('front_end')!r} front end runs in torch"
    return None
