"""The IPTC digital source type (XMP) and camera make and model (EXIF): unsigned claims.

Generator settings are in :mod:`diffsleuth.provenance.generators`.
"""

from __future__ import annotations

import re

from diffsleuth.provenance.result import AI_EDITED, CAMERA, GENERATED, Evidence, one_line

IPTC_DST = re.compile(r"cv\.iptc\.org/newscodes/digitalsourcetype/([A-Za-z]+)")
SOURCE_TYPES = {
    "trainedAlgorithmicMedia": (GENERATED, "made by generative AI"),
    "compositeWithTrainedAlgorithmicMedia": (AI_EDITED, "edited with generative AI"),
    "digitalCapture": (CAMERA, "captured by a camera"),
    "computationalCapture": (CAMERA, "captured by a camera with computational processing"),
    "algorithmicMedia": (None, "made by a non-AI algorithm"),
    "compositeSynthetic": (None, "composite with synthetic elements (AI not stated)"),
}
"""IPTC digital source types: ``algorithmicMedia`` is a plain algorithm, not generative AI."""


def source_type_meaning(name: str) -> tuple[str | None, str]:
    return SOURCE_TYPES.get(name, (None, f"digital source type {name}"))


def xmp_evidence(fields: dict[str, str]) -> list[Evidence]:
    """The IPTC digital source type stated in the XMP packet, if any."""
    xmp = fields.get("XMP")
    if not xmp:
        return []
    names = list(dict.fromkeys(IPTC_DST.findall(xmp)))
    found = []
    for name in names:
        declared, meaning = source_type_meaning(name)
        claim = f"{meaning} (XMP source type {one_line(name, 60)})"
        text = f"{'unsigned claim: ' if declared else ''}xmp: {claim}"
        found.append(Evidence("xmp", text, declared, None, {"XMP:DigitalSourceType": name}, claim=claim))
    return found


_GENERATOR_PREFIX = re.compile(r"^\s*(?:prompt|workflow)\s*:", re.I)


def camera_evidence(fields: dict[str, str]) -> list[Evidence]:
    """EXIF make and model: weak evidence of a camera, since any tool can copy or write them."""
    make, model = fields.get("EXIF:Make", ""), fields.get("EXIF:Model", "")
    if not make or not model:
        return []
    if any(_GENERATOR_PREFIX.match(v) or len(v) > 80 or not v.isprintable() for v in (make, model)):
        return []
    name = model if model.lower().startswith(make.lower().split()[0]) else f"{make} {model}"
    return [Evidence("exif", f"unsigned claim: exif: camera {name} (weak: EXIF is easily copied or edited)", CAMERA,
                     name, {"EXIF:Make": make, "EXIF:Model": model}, claim=f"{name} in EXIF (weak: easily copied)")]
