"""The metadata that generators, IPTC and cameras leave behind, as a small table of patterns.

To support another tool, add a :class:`GeneratorPattern`: the fields it writes and a check that
returns a short description (model, version) when a value has that tool's layout, else None.
A key alone is not enough (``parameters`` or ``prompt`` are common words): every check looks
for the structure the tool writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from diffsleuth.provenance.result import AI_EDITED, CAMERA, GENERATED, Evidence, clip, one_line

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


def _json(value: str) -> object:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None


_A1111_STEPS = re.compile(r"(?:^|\n)Steps: \d+, [^\n]*?\b(?:Sampler|Seed|CFG scale): ")


def a1111(value: str) -> str | None:
    """AUTOMATIC1111 / Forge ``parameters``: prompt, ``Negative prompt:``, then ``Steps: 20, Sampler: ...``."""
    if not _A1111_STEPS.search(value):
        return None
    version = re.search(r"\bVersion: ([^,\n]+)", value)
    model = re.search(r"\bModel: ([^,\n]+)", value)
    tool = "Forge" if version and version.group(1).startswith("f") else "AUTOMATIC1111"
    return f"{tool}{f', model {one_line(model.group(1))}' if model else ''}"


def comfyui(value: str) -> str | None:
    """ComfyUI ``prompt`` (API graph of nodes with ``class_type``) or ``workflow`` (``nodes`` list).

    Its WebP/animated savers put the same JSON in EXIF Make/Model as ``prompt:{...}``/``workflow:{...}``.
    """
    value = re.sub(r"^(?:prompt|workflow):", "", value.strip(), flags=re.I)
    graph = _json(value)
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        return "ComfyUI (workflow)"
    if isinstance(graph, dict) and graph and all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        models = sorted({str(n.get("inputs", {}).get("ckpt_name")) for n in graph.values()
                         if isinstance(n.get("inputs"), dict) and n["inputs"].get("ckpt_name")})
        return f"ComfyUI{', model ' + one_line(', '.join(models)) if models else ''}"
    return None


def invokeai(value: str) -> str | None:
    """InvokeAI: ``invokeai_metadata``/``sd-metadata`` JSON, or the ``Dream`` command line of 1.x/2.x."""
    if re.match(r'\s*"[^"\n]*"[^\n]*\s-[sS]\s*\d+', value):
        return "InvokeAI (dream)"
    data = _json(value)
    if not isinstance(data, dict):
        return None
    model = data.get("model") or data.get("model_weights")
    if isinstance(model, dict):
        model = model.get("name") or model.get("model_name")
    settings = {"steps", "cfg_scale", "seed", "scheduler", "generation_mode", "image", "app_version"}
    if not settings & set(data):
        return None
    version = data.get("app_version")
    return f"InvokeAI{' ' + one_line(version, 40) if version else ''}{', model ' + one_line(model) if model else ''}"


def novelai(value: str) -> str | None:
    """NovelAI: ``Software`` is ``NovelAI``; ``Comment`` is its JSON (``steps``, ``sampler``, ``uc`` ...)."""
    if value.strip() == "NovelAI":
        return "NovelAI"
    data = _json(value)
    if isinstance(data, dict) and {"steps", "sampler", "uc"} <= set(data):
        return "NovelAI"
    return None


@dataclass(frozen=True)
class GeneratorPattern:
    tool: str
    fields: tuple[str, ...]
    check: Callable[[str], str | None]


GENERATOR_PATTERNS = (
    GeneratorPattern("AUTOMATIC1111/Forge", ("parameters", "EXIF:UserComment", "EXIF:ImageDescription",
                                            "Comment:file", "Comment"), a1111),
    GeneratorPattern("ComfyUI", ("prompt", "workflow", "EXIF:Make", "EXIF:Model", "EXIF:ImageDescription"), comfyui),
    GeneratorPattern("InvokeAI", ("invokeai_metadata", "sd-metadata", "Dream", "invokeai_graph"), invokeai),
    GeneratorPattern("NovelAI", ("Software", "EXIF:Software", "Comment"), novelai),
)


def generator_evidence(fields: dict[str, str]) -> list[Evidence]:
    """One item per tool whose settings are in ``fields``."""
    found = []
    for pattern in GENERATOR_PATTERNS:
        hits = {name: fields[name] for name in pattern.fields if name in fields}
        described = next((d for d in (pattern.check(v) for v in hits.values()) if d), None)
        if described is None:
            continue
        if pattern.tool == "NovelAI" and fields.get("Source"):
            described += f" ({one_line(fields['Source'])})"
            hits["Source"] = fields["Source"]
        keys = ", ".join(hits)
        found.append(Evidence("metadata", f"generator settings of {described} in {keys}", GENERATED,
                              described, {k: clip(v) for k, v in hits.items()}))
    return found


def xmp_evidence(fields: dict[str, str]) -> list[Evidence]:
    """The IPTC digital source type stated in the XMP packet, if any."""
    xmp = fields.get("XMP")
    if not xmp:
        return []
    names = list(dict.fromkeys(IPTC_DST.findall(xmp)))
    found = []
    for name in names:
        declared, meaning = source_type_meaning(name)
        if declared == CAMERA:
            meaning += " (weak: unsigned metadata)"
        found.append(Evidence("xmp", f"xmp: {one_line(meaning)} ({one_line(name, 60)})", declared, None,
                              {"XMP:DigitalSourceType": name}))
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
    return [Evidence("exif", f"exif: camera {name} (weak: EXIF is easily copied or edited)", CAMERA, name,
                     {"EXIF:Make": make, "EXIF:Model": model})]
