"""Generator settings that image tools embed, as a small table of patterns.

To support another tool, add a :class:`GeneratorPattern`: the fields it writes (a name, or
``*/key`` for a key inside a JSON object, or ``XMP:*`` for any XMP property) and a check that
returns a short description (model, version) when a value has that tool's layout, else None.
A key alone is not enough (``parameters`` or ``prompt`` are common words): every check looks
for the structure the tool writes. All of it is an unsigned claim: anyone can write these fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from diffsleuth.provenance.result import GENERATED, Evidence, clip, one_line

MAX_LINES = 10_000


@lru_cache(maxsize=16)
def _json(value: str) -> object:
    """The parsed value (cached: several checks read the same field; callers never mutate it)."""
    try:
        data = json.loads(value)
        if isinstance(data, str) and data.lstrip().startswith("{"):
            data = json.loads(data)  # RuinedFooocus stores its JSON object as a JSON string
        return data
    except (json.JSONDecodeError, RecursionError):
        return None


def _object(value: str) -> dict | None:
    data = _json(value) if value.lstrip()[:1] in ("{", '"') else None
    return data if isinstance(data, dict) else None


def _named(tool: str, version: object = None, model: object = None) -> str:
    text = tool + (f" {one_line(version, 40)}" if version else "")
    return text + (f", model {one_line(model)}" if model else "")


_STEPS = re.compile(r"\bSteps: \d+,")
_SETTING = re.compile(r"\b(?:Sampler|Seed|CFG scale): ")


def a1111(value: str) -> str | None:
    """AUTOMATIC1111 / Forge / Civitai ``parameters``: prompt, ``Negative prompt:``, ``Steps: 20, Sampler: ...``.

    Read line by line (linear time on hostile text): one line must hold ``Steps: N,`` and a sampler,
    seed or CFG setting, in any order (Civitai and hires/upscale passes reorder and add keys).
    """
    line = next((ln for ln in value.split("\n", MAX_LINES)[:MAX_LINES]
                 if _STEPS.search(ln) and _SETTING.search(ln)), None)
    if line is None:
        return None
    version = re.search(r"\bVersion: ([^,\n]+)", line)
    model = re.search(r"\bModel: ([^,\n]+)", line)
    name = version.group(1) if version else ""
    tool = ("Fooocus" if name.startswith("Fooocus") else "Forge" if name.startswith("f")
            else "Civitai" if "Civitai resources:" in line else "AUTOMATIC1111")
    return _named(tool, None, model.group(1) if model else None)


def comfyui(value: str) -> str | None:
    """ComfyUI ``prompt`` (API graph of nodes with ``class_type``) or ``workflow`` (``nodes`` list).

    Its WebP/animated savers put the same JSON in EXIF Make/Model as ``prompt:{...}``/``workflow:{...}``;
    "Save Image Plus" puts ``{"prompt": ..., "workflow": ...}`` in EXIF UserComment (read as ``*/prompt``).
    """
    value = re.sub(r"^(?:prompt|workflow):", "", value.strip(), flags=re.I)
    graph = _object(value)
    if graph is None:
        return None
    if isinstance(graph.get("nodes"), list):
        return "ComfyUI (workflow)"
    if graph and all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        models = sorted({str(n.get("inputs", {}).get("ckpt_name")) for n in graph.values()
                         if isinstance(n.get("inputs"), dict) and n["inputs"].get("ckpt_name")})
        return _named("ComfyUI", None, ", ".join(models) if models else None)
    return None


def invokeai(value: str) -> str | None:
    """InvokeAI: ``invokeai_metadata``/``sd-metadata`` JSON, or the ``Dream`` command line of 1.x/2.x."""
    if re.match(r'\s*"[^"\n]*"[^\n]*\s-[sS]\s*\d+', value):
        return "InvokeAI (dream)"
    data = _object(value)
    if data is None:
        return None
    model = data.get("model") or data.get("model_weights")
    if isinstance(model, dict):
        model = model.get("name") or model.get("model_name")
    settings = {"steps", "cfg_scale", "seed", "scheduler", "generation_mode", "image", "app_version"}
    if not settings & set(data):
        return None
    return _named("InvokeAI", data.get("app_version"), model)


def novelai(value: str) -> str | None:
    """NovelAI: ``Software`` is ``NovelAI``; ``Comment`` is its JSON (``steps``, ``sampler``, ``uc`` ...).

    Its JPEG/WebP exports hold all those fields as one JSON object in EXIF UserComment (``*/Software``).
    """
    if value.strip() == "NovelAI":
        return "NovelAI"
    data = _object(value)
    if data is not None and {"steps", "sampler", "uc"} <= set(data):
        return "NovelAI"
    return None


def swarmui(value: str) -> str | None:
    """SwarmUI: a JSON object with ``sui_image_params`` (PNG ``parameters``, JPEG/WebP EXIF UserComment)."""
    data = _object(value)
    params = data.get("sui_image_params") if data else None
    if not isinstance(params, dict):
        return None
    return _named("SwarmUI", params.get("swarm_version"), params.get("model"))


def fooocus(value: str) -> str | None:
    """Fooocus (``parameters`` JSON with a ``Fooocus`` version) and RuinedFooocus (``"software": "RuinedFooocus"``)."""
    data = _object(value)
    if data is None:
        return None
    if data.get("software") == "RuinedFooocus":
        return _named("RuinedFooocus", None, data.get("base_model_name"))
    version = str(data.get("version") or data.get("Version") or "")
    if version.startswith("Fooocus"):
        return _named("Fooocus", version.removeprefix("Fooocus").strip(), data.get("base_model") or
                      data.get("Base Model"))
    return None


_DIFFUSERS_SETTINGS = {"num_inference_steps", "guidance_scale", "seed", "resolution", "sampler", "style_preset"}


def diffusers_space(value: str) -> str | None:
    """Hugging Face Spaces built on diffusers + Gradio: ``parameters`` JSON with ``prompt`` and
    diffusers' argument names (``num_inference_steps``, ``guidance_scale``, ``resolution`` ...)."""
    data = _object(value)
    if data is None or "prompt" not in data or "num_inference_steps" not in data and "guidance_scale" not in data:
        return None
    if fooocus(value):
        return None  # Fooocus uses some of the same names
    if len(_DIFFUSERS_SETTINGS & set(data)) < 2:
        return None
    return _named("diffusers (Hugging Face Space)", None, data.get("Model") or data.get("model"))


@dataclass(frozen=True)
class GeneratorPattern:
    tool: str
    fields: tuple[str, ...]
    check: Callable[[str], str | None]


_TEXT_FIELDS = ("parameters", "EXIF:UserComment", "EXIF:ImageDescription", "Comment:file", "Comment",
                "Stealth:alpha", "*/parameters", "XMP:*")
GENERATOR_PATTERNS = (
    GeneratorPattern("AUTOMATIC1111/Forge", _TEXT_FIELDS, a1111),
    GeneratorPattern("SwarmUI", ("parameters", "EXIF:UserComment", "Stealth:alpha", "XMP:*"), swarmui),
    GeneratorPattern("ComfyUI", ("prompt", "workflow", "EXIF:Make", "EXIF:Model", "EXIF:ImageDescription",
                                 "*/prompt", "*/workflow", "XMP:*"), comfyui),
    GeneratorPattern("InvokeAI", ("invokeai_metadata", "sd-metadata", "Dream", "invokeai_graph"), invokeai),
    GeneratorPattern("NovelAI", ("Software", "EXIF:Software", "Comment", "*/Software", "*/Comment", "XMP:*"),
                     novelai),
    GeneratorPattern("Fooocus", ("parameters", "EXIF:UserComment", "Stealth:alpha"), fooocus),
    GeneratorPattern("diffusers", ("parameters",), diffusers_space),
)


def _wanted(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or p.endswith("*") and name.startswith(p[:-1])
               or p.startswith("*") and name.endswith(p[1:]) for p in patterns)


def generator_evidence(fields: dict[str, str]) -> list[Evidence]:
    """One item per tool whose settings are in ``fields``: each an unsigned claim of generation."""
    try:
        return _generator_evidence(fields)
    finally:
        _json.cache_clear()  # the cache is for one file: never keep a file's text alive


def _generator_evidence(fields: dict[str, str]) -> list[Evidence]:
    found = []
    for pattern in GENERATOR_PATTERNS:
        hits = {name: value for name, value in fields.items() if name != "XMP" and _wanted(name, pattern.fields)}
        described, where = next(((d, n) for n, d in ((n, pattern.check(v)) for n, v in hits.items()) if d),
                                (None, None))
        if described is None:
            continue
        source = fields.get("Source") or fields.get(f"{where.split('/')[0]}/Source")
        if pattern.tool == "NovelAI" and source:
            described += f" ({one_line(source)})"
        found.append(Evidence("metadata", f"unsigned claim: generator settings of {described} in {where}", GENERATED,
                              described, {where: clip(hits[where])}, claim=f"settings of {described} in {where}"))
    return found
