"""C2PA manifests (Content Credentials) through ``c2pa-python``, the CAI's own bindings, offline.

Reading never touches the network: remote manifests and OCSP responses are not fetched
(``verify.remote_manifest_fetch`` and ``verify.ocsp_fetch`` off), so a manifest stored at a URL
is reported as such. ``c2pa-python`` is the optional ``provenance`` extra; without it, a file
that carries a manifest says so and is reported as not verified.

What a manifest declares is read from the actions of the active manifest (and of its
ingredients' manifests), by IPTC digital source type: ``trainedAlgorithmicMedia`` on the action
that created the asset means generated, on any other action (or on an ingredient) AI-edited;
``compositeWithTrainedAlgorithmicMedia`` means AI-edited; ``digitalCapture`` a camera;
``algorithmicMedia`` (a plain algorithm) is not generative AI. A manifest that fails validation
(tampered pixels, a broken signature, a credential that does not validate) still makes its claims:
they are reported as claims whose signature is invalid (:data:`SIGNATURE_INVALID`), like any other
unsigned claim, never as signed ones. A manifest that cannot be read at all declares nothing.
"""

from __future__ import annotations

import io
import json
import re
from functools import lru_cache
from typing import Any

from diffsleuth.provenance.patterns import source_type_meaning
from diffsleuth.provenance.result import (AI_EDITED, GENERATED, RANK, SIGNATURE_INVALID, SIGNED_TRUSTED,
                                          SIGNED_UNTRUSTED, Evidence, one_line)

UNTRUSTED_CODES = ("signingCredential.untrusted",)
OFFLINE_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
INSTALL_HINT = "pip install 'diffsleuth[provenance]'"


EMBEDDED_MARKER = b"jumdc2pa"
"""A JUMBF description box whose type UUID starts with ``c2pa``: an embedded manifest store."""


def may_hold_manifest(data: bytes) -> bool:
    """Cheap pre-check: an embedded manifest store, or an XMP ``dcterms:provenance`` reference to one."""
    return EMBEDDED_MARKER in data or b"dcterms:provenance" in data


@lru_cache(maxsize=4)
def _context(trust_anchors: str | None) -> Any:
    import c2pa

    settings: dict[str, Any] = json.loads(json.dumps(OFFLINE_SETTINGS))
    if trust_anchors:
        settings["verify"]["verify_trust"] = True
        settings["trust"] = {"trust_anchors": trust_anchors}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


def _agent_name(agent: object) -> str | None:
    """A software agent or generator entry (a string, or ``{"name", "version"}``) as one short line."""
    if isinstance(agent, dict):
        name, version = agent.get("name"), agent.get("version")
        agent = f"{name} {version}" if name and version else name
    return one_line(agent) if agent and str(agent).strip() else None


def _actions(manifest: dict) -> list[dict]:
    out = []
    for assertion in manifest.get("assertions") or []:
        if isinstance(assertion, dict) and str(assertion.get("label", "")).startswith("c2pa.actions"):
            actions = (assertion.get("data") or {}).get("actions") or []
            out += [a for a in actions if isinstance(a, dict)]
    return out


def _source_type(action: dict) -> str | None:
    dst = action.get("digitalSourceType")
    return str(dst).strip().rstrip("/").rsplit("/", 1)[-1] if dst else None


def _claim_generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return _agent_name(info[0])
    return _agent_name(manifest.get("claim_generator"))


def _declaration(store: dict, manifest: dict) -> tuple[str | None, str | None, str, str]:
    """(declared, tool named, phrase, short phrase) from a manifest's actions, then its ingredients' manifests."""
    best: tuple[str | None, str | None, str, str] = (None, None, "no AI declared", "no AI declared")
    note = None
    for action in _actions(manifest):
        dst = _source_type(action)
        if dst is None:
            continue
        kind, meaning = source_type_meaning(dst)
        if kind == GENERATED and action.get("action") != "c2pa.created":
            kind, meaning = AI_EDITED, "edited with generative AI"
        agent = _agent_name(action.get("softwareAgent"))
        phrase = f"{meaning} ({dst}{f', {agent}' if agent else ''})"
        short = f"{meaning}{f' ({agent})' if agent else ''}"
        if kind is None:
            note = note or (None, agent, phrase, short)
        elif RANK[kind] > RANK.get(best[0] or "", 0) or (kind == best[0] and agent and not best[1]):
            best = (kind, agent, phrase, short)
    if best[0] in (GENERATED, AI_EDITED):
        return best
    for ingredient in manifest.get("ingredients") or []:
        label = ingredient.get("active_manifest") if isinstance(ingredient, dict) else None
        inner = (store.get("manifests") or {}).get(label) if isinstance(label, str) else None
        if isinstance(inner, dict) and inner is not manifest:
            kind, tool, _, _ = _declaration({}, inner)
            if kind in (GENERATED, AI_EDITED):
                name = tool or _claim_generator(inner)
                phrase = f"has an ingredient made or edited by generative AI{f' ({name})' if name else ''}"
                return AI_EDITED, name, phrase, phrase
    return note if best[0] is None and note else best


def _validation(state: str, store: dict) -> tuple[str, str]:
    """(validation text, signature state) from the reader's state and status codes."""
    codes = [s.get("code") for s in store.get("validation_status") or [] if isinstance(s, dict)]
    failures = [f.get("code") for f in ((store.get("validation_results") or {}).get("activeManifest") or {})
                .get("failure") or [] if isinstance(f, dict)]
    bad = list(dict.fromkeys(c for c in failures + codes if c and c not in UNTRUSTED_CODES
                             and not c.startswith("cawg.")))
    if state not in ("Valid", "Trusted"):
        return f"invalid ({one_line(', '.join(bad) or state, 200)})", SIGNATURE_INVALID
    if state == "Trusted":
        return "trusted", SIGNED_TRUSTED
    return ("valid (untrusted signer)" if any(c in UNTRUSTED_CODES for c in codes) else "valid"), SIGNED_UNTRUSTED


def c2pa_evidence(data: bytes, trust_anchors: str | None = None) -> tuple[Evidence | None, str | None]:
    """(evidence, validation) for the file's C2PA manifest; (None, None) when it has none.

    ``trust_anchors`` (PEM) turns on trust-list checking against those roots.
    """
    if not may_hold_manifest(data):
        return None, None
    try:
        import c2pa
    except ImportError:
        if EMBEDDED_MARKER not in data:
            return None, None
        text = f"c2pa: manifest present, not verified ({INSTALL_HINT} to read it)"
        return (Evidence("c2pa", text, claim="C2PA manifest present, not verified (c2pa-python not installed)"),
                "not verified (c2pa-python not installed)")
    try:
        reader = c2pa.Reader(io.BytesIO(data), context=_context(trust_anchors))
    except (c2pa.C2paError.ManifestNotFound, c2pa.C2paError.NotSupported):
        return None, None
    except c2pa.C2paError as exc:
        message = str(exc)
        if message.startswith("Remote"):
            url = re.search(r"url (\S+)", message)
            where = f" at {one_line(url.group(1), 300)}" if url else ""
            return (Evidence("c2pa", f"c2pa: manifest stored remotely{where}, not fetched (reading is offline)",
                             fields={"c2pa:remote_url": url.group(1) if url else ""},
                             claim=f"C2PA manifest stored remotely{where}, not fetched"),
                    "remote (not fetched)")
        reason = one_line(message.split(": ", 1)[-1], 200)
        return (Evidence("c2pa", f"c2pa: manifest unreadable ({reason}): not evidence either way",
                         claim=f"C2PA manifest unreadable ({reason})"),
                f"unreadable ({reason})")
    with reader:
        state = reader.get_validation_state()
        store = json.loads(reader.json())
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    validation, signature = _validation(str(state), store)
    signer = _agent_name((manifest.get("signature_info") or {}).get("issuer"))
    generator = _claim_generator(manifest)
    declared, tool, phrase, short = _declaration(store, manifest)
    fields = {"c2pa:claim_generator": generator or "", "c2pa:signer": signer or "", "c2pa:validation": validation}
    by = f" by {generator}" if generator else ""
    if signature == SIGNATURE_INVALID:
        how = f"manifest{by} {validation}, its signature does not count"
    else:
        signed = f"signer {signer}" if signer else "signer"
        how = f"manifest{by}, signature valid, " + (f"{signed} trusted" if signature == SIGNED_TRUSTED
                                                    else f"{signed} not on a trust list")
    claim = short if declared else f"C2PA manifest, {validation}: {short}"
    return Evidence("c2pa", f"c2pa: {phrase}; {how}", declared, tool or generator, fields, signature, claim), validation
