"""Shortcut audit: how well do trivial cues, which say nothing about generation, separate the classes?

Each cue is a number per file (categorical cues are coded by their class frequency) and its
separability is max(AUC, 1 - AUC). A cue above 0.8 means a detector can score well without
looking at generation artefacts: the benchmark, not the detector, is being measured.

The JPEG history of lossless files is estimated from the pixels: re-encoding the luma of a once
JPEG-compressed image at its original quality barely changes it, so the re-compression error
against quality has a sharp dip there; never-compressed images give a smooth curve.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from diffsleuth.io.degrade import Degradation, parse_degradation
from diffsleuth.progress import track

FLAG_AUC = 0.8
HISTORY_QUALITIES = tuple(range(60, 100))
HISTORY_MIN_DIP = 0.05  # below this relative dip, no JPEG history is claimed
NO_JPEG = 101  # quality code for "no JPEG compression found"
_STRUCTURAL_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "progressive", "progression",
                    "adobe", "adobe_transform", "transparency", "duration", "loop", "background",
                    "interlace", "compression", "gamma", "srgb", "chromaticity", "aspect", "dpi"}
_CONTAINERS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}

# libjpeg's quality-50 luminance table (ITU T.81, Annex K), in natural order.
_LUMA_50 = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)

CUES = {
    "file_format": "container format of the file (JPEG, PNG, WEBP, ...)",
    "bytes_per_pixel": "file size divided by width x height",
    "width": "image width in pixels",
    "height": "image height in pixels",
    "jpeg_quality_file": "JPEG quality from the file's quantisation tables (101 = not a JPEG file)",
    "jpeg_history_strength": "depth of the re-compression error dip: evidence the pixels were once JPEG'd",
    "jpeg_quality_pixels": "JPEG quality the pixels were once compressed at, estimated from pixels (101 = none)",
    "metadata_items": "number of metadata entries (EXIF, XMP, ICC, text chunks, comments)",
}
SUGGESTIONS = {
    "file_format": "re-encode both classes into one format: --equalize png (or jpeg:90)",
    "bytes_per_pixel": "re-encode both classes the same way (--equalize jpeg:90); if it persists it reflects "
                       "content or scale differences, check on other real photos",
    "width": "crop or resize both classes to one size before training and evaluation",
    "height": "crop or resize both classes to one size before training and evaluation",
    "jpeg_quality_file": "re-encode both classes at one quality: --equalize jpeg:90 (train with random JPEG)",
    "jpeg_history_strength": "the pixels of one class carry a JPEG history: --equalize jpeg:Q with Q at or below "
                             "the lowest quality present, and train with random JPEG re-encoding",
    "jpeg_quality_pixels": "the classes were JPEG'd at different qualities: --equalize jpeg:Q with Q at or below "
                           "the lowest quality present, and train with random JPEG re-encoding",
    "metadata_items": "strip metadata by re-encoding: --equalize png",
}


def _scaled_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_LUMA_50 * scale + 50) / 100), 1, 255)


def quality_from_tables(quantization: dict | None) -> int:
    """Closest libjpeg quality for the first (luma) quantisation table; NO_JPEG without tables."""
    if not quantization:
        return NO_JPEG
    table = np.asarray(quantization[min(quantization)], dtype=np.float64)
    errors = [np.abs(_scaled_table(q) - table).sum() for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


def jpeg_history(image: Image.Image) -> tuple[float, int]:
    """(dip strength, estimated quality or NO_JPEG) from re-compression of the luma at 60..99."""
    luma = image.convert("L")
    x = np.asarray(luma, dtype=np.float64)
    errors = []
    for quality in HISTORY_QUALITIES:
        buffer = io.BytesIO()
        luma.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        errors.append(np.abs(x - np.asarray(Image.open(buffer), dtype=np.float64)).mean())
    e = np.asarray(errors)
    dip = (0.5 * (e[:-2] + e[2:]) - e[1:-1]) / (e[1:-1] + 1e-3)
    best = int(np.argmax(dip))
    strength = float(dip[best])
    return strength, HISTORY_QUALITIES[best + 1] if strength >= HISTORY_MIN_DIP else NO_JPEG


def _metadata_items(image: Image.Image) -> int:
    keys = {k for k in image.info if k.lower() not in _STRUCTURAL_INFO}
    try:
        exif = image.getexif()
        if len(exif):
            keys.add("exif")
    except Exception:  # noqa: BLE001 - malformed EXIF is still "metadata present"
        keys.add("exif")
    return len(keys)


def equalized_bytes(data: bytes, equalize: Degradation, max_pixels: int) -> bytes:
    """Re-encode file bytes through ``equalize``; its last step picks the container (PNG otherwise)."""
    image = decode_image(data, max_pixels=max_pixels)
    steps = equalize.steps
    last, arg = steps[-1] if steps else ("png", None)
    if last in _CONTAINERS:
        image = Degradation(equalize.spec, steps[:-1])(image)
    else:
        image = equalize(image)
        last, arg = "png", None
    buffer = io.BytesIO()
    options = {"quality": int(arg)} if arg is not None else {}
    if last == "jpeg":
        options["subsampling"] = 2
    image.convert("RGB").save(buffer, format=_CONTAINERS[last], **options)
    return buffer.getvalue()


def file_cues(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, float | str]:
    """Every cue of one file's bytes."""
    try:
        raw = Image.open(io.BytesIO(data))
        fmt = raw.format or "unknown"
        table_quality = quality_from_tables(getattr(raw, "quantization", None)) if fmt in ("JPEG", "MPO") \
            else NO_JPEG
        metadata = _metadata_items(raw)
    except Exception as exc:  # noqa: BLE001 - any parser failure is reported as undecodable
        raise ImageDecodeError(name, f"cannot read image header ({exc})") from exc
    image = decode_image(data, max_pixels=max_pixels, name=name)
    strength, pixel_quality = jpeg_history(image)
    return {
        "file_format": fmt,
        "bytes_per_pixel": len(data) / (image.width * image.height),
        "width": float(image.width),
        "height": float(image.height),
        "jpeg_quality_file": float(table_quality),
        "jpeg_history_strength": strength,
        "jpeg_quality_pixels": float(pixel_quality),
        "metadata_items": float(metadata),
    }


def cue_separability(labels: np.ndarray, values: Sequence[float | str]) -> tuple[float, float]:
    """(raw AUC, max(AUC, 1-AUC)); categories are coded by their share of generated images."""
    if isinstance(values[0], str):
        share = {v: labels[[x == v for x in values]].mean() for v in set(values)}
        numeric = np.array([share[v] for v in values])
    else:
        numeric = np.asarray(values, dtype=np.float64)
    if np.ptp(numeric) == 0:
        return 0.5, 0.5
    auc = float(roc_auc_score(labels, numeric))
    return auc, max(auc, 1.0 - auc)


def _class_summary(labels: np.ndarray, values: Sequence[float | str]) -> dict[str, str]:
    summary = {}
    for name, cls in (("real", 0), ("generated", 1)):
        chosen = [v for v, y in zip(values, labels) if y == cls]
        if isinstance(values[0], str):
            counts = {v: chosen.count(v) for v in sorted(set(chosen))}
            summary[name] = ", ".join(f"{k} {v}" for k, v in counts.items())
        else:
            summary[name] = f"median {np.median(chosen):.4g}"
    return summary


def audit_records(records: Sequence[ImageRecord], *, equalize: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool | None = None) -> dict:
    """Cue separabilities of a labelled set (after re-encoding both classes with ``equalize`` if given)."""
    labelled = [r for r in records if r.label is not None]
    if not labelled:
        raise ValueError("the audit needs labelled images (real and generated)")
    degradation = parse_degradation(equalize) if equalize else None
    rows, labels, failures = [], [], []
    for record in track(labelled, "auditing", enabled=progress):
        try:
            data = record.path.read_bytes()
            if degradation is not None:
                data = equalized_bytes(data, degradation, max_pixels)
            rows.append(file_cues(data, str(record.path), max_pixels))
            labels.append(record.label)
        except (OSError, ImageDecodeError) as exc:
            failures.append({"path": str(record.path), "error": getattr(exc, "reason", str(exc))})
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("the audit needs readable images of both classes")
    cues = []
    for name, description in CUES.items():
        values = [row[name] for row in rows]
        raw, auc = cue_separability(y, values)
        flagged = auc > FLAG_AUC
        cues.append({
            "name": name, "auc": auc, "raw_auc": raw, "flagged": flagged,
            "direction": "higher for generated" if raw > 0.5 else "higher for real" if raw < 0.5 else "none",
            "description": description, "by_class": _class_summary(y, values),
            "suggestion": SUGGESTIONS[name] if flagged else None,
        })
    return {"equalize": str(degradation) if degradation else None, "n": int(y.size),
            "n_real": int((y == 0).sum()), "n_generated": int(y.sum()), "threshold": FLAG_AUC,
            "cues": cues, "failures": failures}
